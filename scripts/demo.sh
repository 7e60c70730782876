#!/usr/bin/env bash
# The whole pipeline on this machine, in one command (`make demo`):
# PostgreSQL in build/demo/pg, a local Kafka-protocol broker, local demo sites,
# one monitor, two consumers and the status page, and a table of each site's
# status read back from PostgreSQL every few seconds. Ctrl-C stops everything in order
# (monitor flushed, consumers' offsets committed) and leaves no process behind.
# Rows stay in build/demo/pg for the next run.
#
#   scripts/demo.sh                                   # local demo sites
#   scripts/demo.sh monitor-data/websites_top100.csv  # real sites (needs internet)
#
# Environment: DEMO_DIR (default build/demo), DEMO_PG_PORT (15432),
# DEMO_FARM_PORT (18080, and the next two), DEMO_STATUS_PORT (18090, the
# status page), DEMO_REFRESH (seconds, 3), BIN_DIR (use these binaries
# instead of building release ones).
set -Eeuo pipefail
# A command that fails stops the demo: say which, rather than stop in silence.
trap 'echo "demo: line $LINENO: \`$BASH_COMMAND\` failed with status $?" >&2' ERR
cd "$(dirname "$0")/.."
root=$PWD
demo_dir=${DEMO_DIR:-$root/build/demo}
pg_port=${DEMO_PG_PORT:-15432}
farm_port=${DEMO_FARM_PORT:-18080}
status_port=${DEMO_STATUS_PORT:-18090}
refresh=${DEMO_REFRESH:-3}
targets=${1:-}

# Every port first: one in use would otherwise end in a service's log.
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for spec in "$pg_port PostgreSQL DEMO_PG_PORT" "$farm_port the demo sites DEMO_FARM_PORT" \
  "$((farm_port + 1)) the demo sites (HTTPS) DEMO_FARM_PORT" "$((farm_port + 2)) the demo sites (self-signed) DEMO_FARM_PORT" \
  "$status_port the status page DEMO_STATUS_PORT"; do
  read -r port what <<<"$spec"
  variable=${what##* }
  if in_use "$port"; then
    echo "demo: port $port (${what% *}) is in use by another program: stop it (a demo still running? \`ss -ltnp | grep :$port\`) or set $variable to a free port" >&2
    exit 1
  fi
done

if [[ -z ${BIN_DIR:-} ]]; then
  scripts/setup.sh
  cargo build --release --locked --bins
  BIN_DIR=$root/target/release
fi
mkdir -p "$demo_dir/logs"
logs=$demo_dir/logs

# Started in their own sessions, so Ctrl-C reaches only this script, which
# then stops them in order: producers before the broker, consumers before the database.
names=()
declare -A pid_of
start() {
  local name=$1
  shift
  # Emptied here, not by the background job's redirections, which may come
  # later: value_of must never read the previous run's lines.
  : >"$logs/$name.out"
  : >"$logs/$name.log"
  setsid "$@" >>"$logs/$name.out" 2>>"$logs/$name.log" </dev/null &
  pid_of[$name]=$!
  names+=("$name")
}

stop() {
  local name pid
  for name in "$@"; do
    pid=${pid_of[$name]:-}
    if [[ -n $pid ]]; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for name in "$@"; do
    pid=${pid_of[$name]:-}
    if [[ -n $pid ]]; then wait "$pid" 2>/dev/null || true; fi
    unset "pid_of[$name]"
  done
}

cleanup() {
  trap - INT TERM EXIT
  echo
  echo "demo: stopping (monitor, status page, consumers, then broker, sites and PostgreSQL)..."
  stop monitor status
  stop consumer-1 consumer-2
  stop broker farm pg
  echo "demo: stopped; rows are kept in $demo_dir/pg, logs in $logs"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

# Ends the demo, quoting its log, once `name` has exited or `deadline` passed.
give_up_on() {
  local name=$1 deadline=$2
  if ! kill -0 "${pid_of[$name]}" 2>/dev/null || ((SECONDS > deadline)); then
    echo "demo: $name did not start; its log ($logs/$name.log):" >&2
    tail -n 20 "$logs/$name.log" >&2
    exit 1
  fi
}

# Prints the value of the first `key=value` line of a file once it appears.
value_of() {
  local key=$1 file=$2 name=$3 deadline=$((SECONDS + 60)) line
  until line=$(grep -m1 "^$key=" "$file" 2>/dev/null); do
    give_up_on "$name" "$deadline"
    sleep 0.1
  done
  echo "${line#*=}"
}

start pg "$BIN_DIR/localpg" --data-dir "$demo_dir/pg" --port "$pg_port"
pg_url=$(value_of url "$logs/pg.out" pg)
start broker "$BIN_DIR/broker" --topic website-metrics --partitions 4
bootstrap=$(value_of bootstrap "$logs/broker.out" broker)
start farm "$BIN_DIR/sitefarm" --http "127.0.0.1:$farm_port" --https "127.0.0.1:$((farm_port + 1))" \
  --self-signed "127.0.0.1:$((farm_port + 2))" --ca-out "$demo_dir/farm-ca.pem"
value_of http "$logs/farm.out" farm >/dev/null

if [[ -z $targets ]]; then
  targets=$demo_dir/sites.csv
  site=http://127.0.0.1:$farm_port
  cat >"$targets" <<SITES
$site/ok,2,Welcome to sitefarm
$site/ok?page=2,3,this text is not there
$site/slow/1500,4
$site/slow/6000,5
$site/status/500,3
$site/status/404,5
$site/redirect/3,4,chain done
https://localhost:$((farm_port + 1))/ok,5,Welcome
https://localhost:$((farm_port + 2))/ok,5
http://127.0.0.1:1/,5
http://no-such-site.invalid/,5
SITES
fi

export SITEWATCH_KAFKA_BROKERS=$bootstrap SITEWATCH_KAFKA_TOPIC=website-metrics
export SITEWATCH_POSTGRES_URL="$pg_url?sslmode=disable" SITEWATCH_POSTGRES_SSLMODE=disable
# Short group timeouts: the second consumer joins within seconds rather than
# after the default session timeout of the member it waits for.
group=(--group-id sitewatch-demo --batch-wait 200ms -X session.timeout.ms=6000
  -X heartbeat.interval.ms=500 -X max.poll.interval.ms=10000)
start consumer-1 "$BIN_DIR/consumer" "${group[@]}"
start consumer-2 "$BIN_DIR/consumer" "${group[@]}"
start monitor "$BIN_DIR/monitor" --targets "$targets" --ca-file "$demo_dir/farm-ca.pem"
start status "$BIN_DIR/status" --listen "127.0.0.1:$status_port" --refresh 2s --title "sitewatch demo"
page=http://127.0.0.1:$status_port/

# Waits until `name` listens on `port`, or says why it did not start.
listening() {
  local name=$1 port=$2 deadline=$((SECONDS + 60))
  until in_use "$port"; do
    give_up_on "$name" "$deadline"
    sleep 0.2
  done
}
listening status "$status_port"

echo "demo: running; status page at $page, PostgreSQL at ${pg_url%%\?*} (database sitewatch), Kafka at $bootstrap. Ctrl-C stops."
[[ -t 1 ]] && clear
while true; do
  sleep "$refresh"
  for name in "${names[@]}"; do
    pid=${pid_of[$name]:-}
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
      echo "demo: $name stopped unexpectedly; its log ($logs/$name.log):" >&2
      tail -n 20 "$logs/$name.log" >&2
      exit 1
    fi
  done
  table=$(
    echo "sitewatch demo, $(date '+%H:%M:%S'); status page: $page; Ctrl-C stops. Logs: $logs"
    psql "$pg_url" -X -q -P pager=off -c \
      "SELECT url, last_result, latency_ms, regex_ok, probes, uptime_pct, to_char(last_probe_at, 'HH24:MI:SS') AS last_probe FROM site_status ORDER BY url" \
      2>/dev/null || echo "(waiting for the first rows)"
  )
  if [[ -t 1 ]]; then
    # Drawn over the last table (cursor home, each line cleared to its end,
    # the rest of the screen cleared), not scrolled below it.
    printf '\033[H%s\033[J' "${table//$'\n'/$'\033[K\n'}"
  else
    echo "$table"
  fi
done
