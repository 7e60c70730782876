#!/usr/bin/env bash
# Runs the benchmarks: installs what they need when missing, builds the
# release binaries, and runs target/release/bench with the arguments given
# (none: the quick set, a few minutes; --full: the sizes the goals are set
# at; --scenario NAME: one scenario; --json FILE: keep the summary).
# BASELINE=<git revision> also builds that revision's consumer (in a worktree
# under build/baseline) and has the ingest scenario drain with it in the same
# runs, as the figure of the release before.
set -euo pipefail
cd "$(dirname "$0")/.."

# The build's packages and PostgreSQL (ingest, latency).
scripts/setup.sh

# wrk (the ceiling scenario's raw limit) and blackbox_exporter (the peer).
packages=(wrk prometheus-blackbox-exporter)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "bench: installing ${missing[*]}" >&2
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  install() { DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
  # A stale package index is the usual reason an install fails: refresh it once and retry.
  install || { "${sudo_cmd[@]}" apt-get update -qq && install; }
fi

cargo build --release --locked --bins
if [[ -n ${BASELINE:-} ]]; then
  tree=build/baseline/$BASELINE
  [[ -d $tree ]] || git worktree add --detach "$tree" "$BASELINE"
  (cd "$tree" && CARGO_TARGET_DIR="$PWD/../target" cargo build --release --locked -p sitewatch-consumer --bin consumer)
  export BENCH_BASELINE_CONSUMER="$PWD/build/baseline/target/release/consumer"
fi
exec target/release/bench "$@"
