#!/usr/bin/env bash
# Installs the system packages the build and the tests need, when missing.
# Safe to run again: it installs nothing that is already there.
set -euo pipefail

# What rdkafka's bundled librdkafka needs to build with TLS and compression,
# the PostgreSQL server binaries the consumer's tests start in a temp dir,
# openssl to make the mutual-TLS tests' certificates, docker-compose to
# check the compose files, and prometheus for its promtool, which checks
# observability/, and for the server crates/e2e/tests/prometheus.rs runs
# (where systemd runs, the package also starts a Prometheus on port 9090:
# `systemctl disable --now prometheus` if it is in the way), and chromium,
# the headless browser crates/e2e/tests/status_page.rs looks at the status
# page with.
packages=(build-essential pkg-config libssl-dev zlib1g-dev ca-certificates openssl postgresql docker-compose prometheus chromium)

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

for tool in cargo rustfmt; do
  command -v "$tool" >/dev/null || { echo "setup: $tool not found; install Rust with rustup (components rustfmt, clippy)" >&2; exit 1; }
done
