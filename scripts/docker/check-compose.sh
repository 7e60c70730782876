#!/usr/bin/env bash
# Checks the compose files without a Docker daemon:
# 1. each combination users run parses (`docker compose config`, or
#    `docker-compose config` where the plugin is missing);
# 2. every environment variable the files set on monitor, consumer and status is one
#    the binary reads, as its --help documents it;
# 3. Prometheus stays under its profile, so a plain `up` leaves it out, and
#    promtool (Debian's prometheus package) accepts observability/.
# Usage: scripts/docker/check-compose.sh [BIN_DIR]   (default target/debug)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin_dir=${1:-target/debug}

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose=(docker-compose)
else
  echo "check-compose: neither 'docker compose' nor 'docker-compose' is installed" >&2
  exit 1
fi

export KAFKA_BOOTSTRAP=${KAFKA_BOOTSTRAP:-managed.example.com:12345}
combinations=(
  "docker-compose.yml"
  "docker-compose.yml docker-compose.managed-kafka.yml"
)
[[ -f scripts/docker/compose.test.yml ]] && combinations+=("docker-compose.yml scripts/docker/compose.test.yml")

status=0
for combo in "${combinations[@]}"; do
  args=()
  for f in $combo; do args+=(-f "$f"); done
  config=$("${compose[@]}" "${args[@]}" config) || { echo "check-compose: $combo does not parse" >&2; status=1; continue; }
  for service in monitor consumer status; do
    help=$("$bin_dir/$service" --help)
    # The service's environment block in the normalised config: "      NAME: value" lines.
    names=$(awk -v svc="  $service:" '
      $0 == svc { in_svc = 1; next }
      in_svc && /^  [^ ]/ { in_svc = 0 }
      in_svc && /^    environment:/ { in_env = 1; next }
      in_env && /^    [^ ]/ { in_env = 0 }
      in_svc && in_env && /^      [A-Z0-9_]+:/ { sub(/^ +/, ""); sub(/:.*/, ""); print }
    ' <<<"$config")
    for name in $names; do
      if ! grep -q "\[env: $name" <<<"$help"; then
        echo "check-compose: $combo sets $name on $service, which '$service --help' does not list" >&2
        status=1
      fi
    done
    echo "check-compose: $combo: $service reads all $(wc -w <<<"$names") variables it is given"
  done
done

# Compose v2 leaves a service of an inactive profile out of `config` and the
# older docker-compose lists it, so look with the profile on at what it says.
if "${compose[@]}" --profile observability config | awk '
  $0 == "  prometheus:" { in_svc = 1; next }
  in_svc && /^  [^ ]/ { in_svc = 0 }
  in_svc && /^    profiles:/ { in_prof = 1; next }
  in_prof && /^    [^ -]/ { in_prof = 0 }
  in_svc && in_prof && /^    - observability$/ { found = 1 }
  END { exit !found }'; then
  echo "check-compose: prometheus runs only with --profile observability"
else
  echo "check-compose: docker-compose.yml must keep prometheus under profiles: [observability]" >&2
  status=1
fi

if ! command -v promtool >/dev/null; then
  echo "check-compose: promtool not found (Debian's prometheus package; scripts/setup.sh installs it)" >&2
  status=1
elif out=$(promtool check config observability/prometheus.yml 2>&1); then
  # `check config` also checks the rule files the configuration names.
  echo "check-compose: promtool accepts observability/prometheus.yml and its rule files"
else
  echo "$out" >&2
  echo "check-compose: promtool refuses observability/" >&2
  status=1
fi
exit $status
