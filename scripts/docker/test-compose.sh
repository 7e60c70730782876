#!/usr/bin/env bash
# Runs the users' docker-compose.yml on this machine's Docker engine and checks
# it by querying PostgreSQL. No image can be pulled here, so the base images
# are made locally (local-images.sh) and scripts/docker/compose.test.yml swaps
# only the third-party images (Kafka, PostgreSQL, Prometheus) for local
# stand-ins. The stack runs with the observability profile, as an operator
# who wants Prometheus would run it.
#
# Checks: rows arrive for every test site; with --scale consumer=3 each
# consumer holds partitions and the rows are complete; Prometheus finds the
# monitor, the three consumers and the status page by DNS, scrapes them all
# and has the example alert rules loaded; `docker kill` of a
# consumer mid-stream loses and doubles nothing; PostgreSQL stopped for 30 s
# and started again, the consumers recover without a restart; one consumer
# cut off from PostgreSQL for 60 s (docker network disconnect) says not ready
# and recovers by itself; the broker container paused for 30 s (hung, not
# dead) costs nothing; a consumer OOM-killed under a memory limit while
# reading large messages is restarted by the restart policy and, given room,
# stores each one as a dead letter, once, which Prometheus raises as an alert
# (and by then has stored every metric the alerts read); stopping gives
# exit code 0 for monitor and consumers; after `up` again no probe id is
# doubled; the managed-Kafka override against a broker that requires a
# client certificate (made here with openssl) delivers rows and no key
# material reaches a log. Prints the image sizes and the time from `up` to the first row.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
work=$root/build/compose-test
mkdir -p "$work"
export COMPOSE_PROJECT_NAME=sitewatchtest
export BUILDER_IMAGE=sitewatch-local/builder:bookworm RUNTIME_IMAGE=sitewatch-local/runtime:bookworm
export SITEWATCH_LOG_FORMAT=json TOPIC_PARTITIONS=6 POSTGRES_PASSWORD=compose-test
# Prometheus too, on a free port of the loopback interface (found with `port`).
export COMPOSE_PROFILES=observability PROMETHEUS_PORT=127.0.0.1: STATUS_PORT=127.0.0.1: STATUS_REFRESH=2s

say() { echo "test-compose: $*"; }
fail() {
  echo "test-compose: FAILED: $*" >&2
  "${compose[@]}" ps >&2 || true
  "${compose[@]}" logs --tail 30 >&2 || true
  # Every line of every container, for what the tail above cut off.
  "${compose[@]}" logs --no-color >"$work/compose.log" 2>&1 || true
  echo "test-compose: every container's whole log is in $work/compose.log" >&2
  exit 1
}

if ! docker info >/dev/null 2>&1; then
  say "starting the Docker engine"
  (nohup dockerd >"$work/dockerd.log" 2>&1 &)
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "test-compose: the Docker engine does not start; see $work/dockerd.log" >&2; exit 1; }
fi
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
compose+=(-f docker-compose.yml -f scripts/docker/compose.test.yml)

cleanup() { "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup

scripts/docker/local-images.sh runtime builder postgres

# The stand-ins are test tools, built on the host: only the users' images go
# through their Dockerfiles.
cargo build --release --locked -p sitewatch-broker -p sitewatch-sitefarm --bins
ctx=$work/standins
rm -rf "$ctx" && mkdir -p "$ctx"
cp scripts/docker/standins/* target/release/broker target/release/kafka-admin target/release/sitefarm "$ctx/"
docker build -q --build-arg BASE="$RUNTIME_IMAGE" -t sitewatch-test/kafka -f "$ctx/kafka.Dockerfile" "$ctx" >/dev/null
docker build -q --build-arg BASE="$RUNTIME_IMAGE" -t sitewatch-test/sites -f "$ctx/sites.Dockerfile" "$ctx" >/dev/null
# Debian's prometheus package, from the mirror this machine reaches.
docker build -q --network host --build-arg BASE="$RUNTIME_IMAGE" -t sitewatch-test/prometheus \
  -f "$ctx/prometheus.Dockerfile" "$ctx" >/dev/null

# Test sites: one of each kind, and twenty fast ones for volume.
{
  echo "http://sites:8080/ok,1,Welcome"
  echo "http://sites:8080/status/500,1"
  echo "http://sites:8080/redirect/2,1,chain done"
  echo "http://sites:8080/slow/300,1"
  echo "https://sites:8444/ok,2"
  for i in $(seq 20); do echo "http://sites:8080/site/$i,0.5"; done
} >"$work/sites.csv"
sites=$(wc -l <"$work/sites.csv")

psql_q() { "${compose[@]}" exec -T postgres psql -U sitewatch -d sitewatch -tAq -c "$1" 2>/dev/null | tr -d '[:space:]'; }
rows() { psql_q "SELECT count(*) FROM metrics" || echo 0; }
wait_until() { # seconds, description, command...
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@"; do
    ((SECONDS < deadline)) || fail "timed out waiting for $what"
    sleep 1
  done
}
sites_with_rows() { [[ $(psql_q "SELECT count(DISTINCT website_id) FROM metrics" || echo 0) -ge $sites ]]; }
rows_above() { [[ $(rows) -gt $1 ]]; }
messages() { "${compose[@]}" exec -T kafka kafka-admin --bootstrap-server localhost:9092 messages --topic website-metrics | tr -d '[:space:]'; }
dead() { psql_q "SELECT count(*) FROM dead_letters" || echo 0; }
# Large messages that are not metrics, published by the OOM step: each one
# must end as a dead letter, and every other message as a row.
big=36
all_stored() { local m; m=$(messages) && [[ -n $m && $(($(rows) + $(dead))) -eq $m ]]; }

say "building the images and starting the stack"
build_start=$SECONDS
"${compose[@]}" build
build_time=$((SECONDS - build_start))
up_start=$SECONDS
"${compose[@]}" up -d
wait_until 180 "a first row" rows_above 0
first_row=$((SECONDS - up_start))
wait_until 120 "rows for all $sites test sites" sites_with_rows
say "rows arrive for every test site (first row $first_row s after up)"

say "the status page lists every test site"
status=http://$("${compose[@]}" port status 8080)
lists_all() {
  local body n
  body=$(curl -sS --max-time 5 "$status/api/sites" 2>&1) || { say "status: $body"; return 1; }
  n=$(grep -o '"matching":[0-9]*' <<<"$body" | cut -d: -f2)
  [[ -n $n && $n -ge $sites ]]
}
wait_until 120 "the status API to list all $sites test sites" lists_all
page=$(curl -sS --max-time 5 "$status/?sort=url") || fail "the status page does not answer"
grep -qF "http://sites:8080/ok" <<<"$page" || fail "the status page does not show http://sites:8080/ok"
healthy() { [[ $(docker inspect -f '{{.State.Health.Status}}' "$("${compose[@]}" ps -q status)") == healthy ]]; }
wait_until 90 "the status service's health check to pass" healthy
# It reads as its own login, a member of the read role only.
[[ $(psql_q "SELECT count(*) FROM pg_stat_activity WHERE usename = 'sitewatch_status'") -ge 1 ]] ||
  fail "the status service does not read as sitewatch_status"
[[ $(psql_q "SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles WHERE rolname = 'sitewatch_status'") == f ]] ||
  fail "sitewatch_status may do more than read"
say "the status page and API list every test site; its container is healthy"

say "scaling to three consumers"
scaled=$SECONDS
"${compose[@]}" up -d --scale consumer=3 --no-recreate
holding() {
  local n=0 c
  for c in $("${compose[@]}" ps -q consumer); do
    # The last assignment each consumer logged must hold partitions.
    docker logs "$c" 2>&1 | grep '"partitions assigned"' | tail -1 | grep -q '"partitions":"\[[0-9]' && n=$((n + 1))
  done
  [[ $n -eq 3 ]]
}
wait_until 120 "three consumers holding partitions" holding
mark=$(rows)
wait_until 60 "rows after the rebalance" rows_above "$mark"

say "Prometheus: targets found by DNS, alert rules loaded"
prom=http://$("${compose[@]}" port prometheus 9090)
occurrences() { { grep -oF -- "$1" <<<"$2" || true; } | wc -l; }
# What Prometheus said last, for the failure message.
prom_seen=
targets_up() { # monitors consumers status
  local body
  body=$(curl -sS --max-time 5 "$prom/api/v1/targets?state=active" 2>&1) || { prom_seen=$body; return 1; }
  local monitors consumers status up
  monitors=$(occurrences '"scrapePool":"monitor"' "$body")
  consumers=$(occurrences '"scrapePool":"consumer"' "$body")
  status=$(occurrences '"scrapePool":"status"' "$body")
  up=$(occurrences '"health":"up"' "$body")
  prom_seen="$monitors monitor, $consumers consumer and $status status targets, $up up;"
  prom_seen+=" $(grep -oE '"(scrapeUrl|health|lastError)":"[^"]*"' <<<"$body" | paste -sd ' ' || true)"
  [[ $monitors -eq $1 && $consumers -eq $2 && $status -eq $3 && $up -eq $(($1 + $2 + $3)) ]]
}
deadline=$((SECONDS + 120))
until targets_up 1 3 1; do
  ((SECONDS < deadline)) || fail "Prometheus ($prom) did not see 1 monitor, 3 consumers and 1 status up; it saw $prom_seen"
  sleep 1
done
targets_after=$((SECONDS - scaled))
rules=$(curl -sS --max-time 5 "$prom/api/v1/rules") || fail "Prometheus' rules API does not answer: $rules"
for name in $(sed -n 's/^ *- name: *//p; s/^ *- alert: *//p' observability/alerts.yml); do
  grep -qF "\"name\":\"$name\"" <<<"$rules" || fail "Prometheus did not load $name from observability/alerts.yml: $rules"
done
! grep -qF '"health":"err"' <<<"$rules" ||
  fail "an alert rule fails to evaluate: $(grep -oE '"(name|lastError)":"[^"]*"' <<<"$rules" | paste -sd ' ')"
say "Prometheus at $prom: 1 monitor, 3 consumers and 1 status up $targets_after s after the scale; $(grep -c '^ *- alert:' observability/alerts.yml) alert rules loaded"

say "killing one consumer mid-stream"
victim=$("${compose[@]}" ps -q consumer | head -1)
docker kill "$victim" >/dev/null
mark=$(rows)
wait_until 90 "rows after the kill" rows_above $((mark + 100))

say "stopping PostgreSQL for 30 s"
"${compose[@]}" stop postgres >/dev/null
sleep 30
"${compose[@]}" start postgres >/dev/null
mark=$(rows)
wait_until 120 "rows after PostgreSQL came back" rows_above $((mark + 100))

running_consumers() {
  local c
  for c in $("${compose[@]}" ps -q consumer); do
    [[ $(docker inspect -f '{{.State.Running}}' "$c") == true ]] && echo "$c"
  done
}
ready() { docker exec "$1" /usr/local/bin/consumer --check-health >/dev/null 2>&1; }
not_ready() { ! ready "$1"; }

say "cutting one consumer off from PostgreSQL for 60 s (docker network disconnect)"
mapfile -t alive < <(running_consumers)
[[ ${#alive[@]} -gt 1 ]] || fail "fewer than two running consumers: ${alive[*]}"
cut=${alive[0]}
docker network disconnect "${COMPOSE_PROJECT_NAME}_db" "$cut"
cut_start=$SECONDS
mark=$(rows)
wait_until 60 "rows from the other consumers during the cut" rows_above $((mark + 100))
wait_until 75 "the cut consumer reporting not ready" not_ready "$cut"
not_ready_after=$((SECONDS - cut_start))
sleep $((60 - (SECONDS - cut_start) > 0 ? 60 - (SECONDS - cut_start) : 0))
docker network connect "${COMPOSE_PROJECT_NAME}_db" "$cut"
reconnected=$SECONDS
wait_until 120 "the cut consumer ready again" ready "$cut"
[[ $(docker inspect -f '{{.RestartCount}}' "$cut") == 0 ]] || fail "the cut consumer was restarted"
say "the cut consumer said not ready $not_ready_after s into the cut and ready again $((SECONDS - reconnected)) s after, without a restart"

say "pausing the broker container for 30 s (a hung peer, not a dead one)"
kafka=$("${compose[@]}" ps -q kafka)
docker pause "$kafka" >/dev/null
sleep 30
docker unpause "$kafka" >/dev/null
unpaused=$SECONDS
mark=$(rows)
wait_until 120 "rows after the broker came back" rows_above $((mark + 100))
for c in $(running_consumers) $("${compose[@]}" ps -q monitor); do
  [[ $(docker inspect -f '{{.RestartCount}}' "$c") == 0 ]] || fail "$c restarted after the broker pause"
done
say "100 new rows $((SECONDS - unpaused)) s after the broker resumed; nothing restarted"

say "a consumer OOM-killed under a memory limit while reading large messages"
mapfile -t alive < <(running_consumers)
oom=${alive[0]}
others=("${alive[@]:1}")
# One consumer reads everything, so every large message goes through it:
# the messages are produced once the group has given it every partition.
if ((${#others[@]})); then
  stopped_at=$(date +%s)
  docker stop "${others[@]}" >/dev/null
  every_partition="[$(seq -s ', ' 0 $((TOPIC_PARTITIONS - 1)))]"
  # grep reads to the end (no -q), so that pipefail sees no SIGPIPE.
  owns_all() { docker logs --since "$stopped_at" "$oom" 2>&1 | grep -F "\"partitions assigned\",\"partitions\":\"$every_partition\"" >/dev/null; }
  wait_until 90 "the one consumer left to be assigned all $TOPIC_PARTITIONS partitions" owns_all
fi
# Its memory now, without the page cache, plus a little: far less than
# reading the large messages ahead takes.
usage=$(docker stats --no-stream --format '{{.MemUsage}}' "$oom" | awk '{print $1}')
limit_mb=$(awk -v u="$usage" 'BEGIN {
  n = u + 0; if (u ~ /GiB/) n *= 1024; else if (u ~ /KiB/) n /= 1024; printf "%d", n + 8 }')
docker update --memory "${limit_mb}m" --memory-swap "${limit_mb}m" "$oom" >/dev/null
oom_start=$(date +%s)
"${compose[@]}" exec -T kafka kafka-admin --bootstrap-server localhost:9092 \
  produce --topic website-metrics --count "$big" --bytes 524288
oom_killed() { docker events --since "$oom_start" --until "$(date +%s)" --filter "container=$oom" --filter event=oom | grep -q .; }
wait_until 120 "the consumer OOM-killed (limit ${limit_mb} MB)" oom_killed
# What an operator does: give it room (or smaller queue_bytes/batch_bytes).
docker update --memory 1g --memory-swap 1g "$oom" >/dev/null
[[ ${#others[@]} -eq 0 ]] || docker start "${others[@]}" >/dev/null
big_stored() { [[ $(dead) -ge $big ]]; }
wait_until 180 "the $big large messages stored as dead letters" big_stored
say "OOM-killed at ${limit_mb} MB, restarted by the restart policy ($(docker inspect -f '{{.RestartCount}}' "$oom") restarts); the large messages are dead letters, once"

say "Prometheus: the dead letters raise their alert; every metric the alerts read is stored"
# A consumer's dead-letter counter can first appear with these very dead
# letters, which is the case the alert's expression must not miss.
dead_letter_alert() {
  prom_seen=$(curl -sS --max-time 5 "$prom/api/v1/alerts" 2>&1) &&
    grep -qF '"alertname":"SitewatchDeadLetters"' <<<"$prom_seen"
}
deadline=$((SECONDS + 90))
until dead_letter_alert; do
  ((SECONDS < deadline)) || fail "no SitewatchDeadLetters alert, pending or firing, after the dead letters; Prometheus' alerts: $prom_seen"
  sleep 1
done
# Only now has every one had a reason to exist: names that drifted from the
# code would leave an alert that can never fire. Every name stored since the
# start, since the consumers restarted above may not have reported all yet.
alert_metrics=$(grep -oE 'sitewatch_[a-z_]+' observability/alerts.yml | sort -u)
names=$(curl -sS --max-time 5 "$prom/api/v1/label/__name__/values" 2>&1) ||
  fail "Prometheus' label API does not answer: $names"
for name in $alert_metrics; do
  grep -qF "\"$name\"" <<<"$names" || fail "Prometheus never stored $name, which observability/alerts.yml reads; it has: $names"
done
say "SitewatchDeadLetters is active; Prometheus has stored all $(wc -w <<<"$alert_metrics") metrics the alerts read"

say "stopping the monitor, then checking every published message is one row"
"${compose[@]}" stop monitor >/dev/null
wait_until 120 "every message on the topic stored" all_stored
[[ $(psql_q "SELECT count(*) - count(DISTINCT probe_id) FROM metrics") == 0 ]] || fail "a probe id is doubled"
[[ $(dead) == "$big" ]] || fail "$(dead) dead letters, not the $big large messages"

say "docker compose down"
before=$(rows)
# Exit codes as the containers stop; `down` removes them, so wait on them first.
codes=$work/exit-codes
rm -rf "$codes" && mkdir -p "$codes"
waiters=()
for c in $("${compose[@]}" ps -q monitor consumer); do
  [[ $c == "$victim" ]] && continue
  # The logs too, read as soon as it stops: `down` removes the container after.
  (name=$(docker inspect -f '{{.Name}}' "$c" | tr -d /) &&
    docker wait "$c" >"$codes/$name" && docker logs --tail 40 "$c" >"$work/$name.log" 2>&1) &
  waiters+=($!)
done
"${compose[@]}" down >/dev/null 2>&1
wait "${waiters[@]}"
for f in "$codes"/*; do
  [[ $(cat "$f") == 0 ]] || {
    cat "$work/$(basename "$f").log" >&2 || true
    fail "$(basename "$f") exited with $(cat "$f") on down (its last log lines above)"
  }
done
say "down: monitor and consumers exited 0 ($(find "$codes" -type f | wc -l) containers)"

say "up again"
"${compose[@]}" up -d
wait_until 120 "new rows after up again" rows_above "$before"
[[ $(psql_q "SELECT count(*) - count(DISTINCT probe_id) FROM metrics") == 0 ]] || fail "a probe id is doubled after up again"
"${compose[@]}" stop >/dev/null

say "managed Kafka over mutual TLS (the users' override, certificates made with openssl)"
pki=$work/pki
certs=$work/kafka_certs
rm -rf "$pki" "$certs" && mkdir -p "$pki" "$certs"
(
  cd "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=managed kafka CA" -keyout ca.key -out ca.pem
  openssl req -newkey rsa:2048 -nodes -subj "/CN=managed-kafka" -keyout broker.key -out broker.csr
  printf 'subjectAltName=DNS:managed-kafka\nextendedKeyUsage=serverAuth\n' >broker.ext
  openssl x509 -req -days 2 -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -extfile broker.ext -out broker.cert
  openssl req -newkey rsa:2048 -nodes -subj "/CN=sitewatch" -keyout service.key -out service.csr
  printf 'extendedKeyUsage=clientAuth\n' >service.ext
  openssl x509 -req -days 2 -in service.csr -CA ca.pem -CAkey ca.key -CAcreateserial -extfile service.ext -out service.cert
) >"$work/openssl.log" 2>&1 || fail "openssl could not make the test certificates: $(tail -3 "$work/openssl.log")"
cp "$pki/ca.pem" "$pki/service.cert" "$pki/service.key" "$certs/"
# The containers run as uid 10001 (kafka_certs/README.md says the same to users).
chmod 644 "$pki"/* "$certs"/*
managed=("${compose[@]}" -f docker-compose.managed-kafka.yml -f scripts/docker/compose.managed-test.yml)
export KAFKA_BOOTSTRAP=managed-kafka:9093 KAFKA_CERTS_DIR=$certs MANAGED_KAFKA_PKI=$pki
before=$(rows)
"${managed[@]}" up -d managed-kafka
"${managed[@]}" up -d
wait_until 120 "rows through the managed Kafka" rows_above $((before + 50))
managed_log=$("${managed[@]}" logs --no-color monitor consumer 2>&1)
for service in monitor consumer; do
  grep -E "^[^|]*$service[^|]*\|" <<<"$managed_log" | grep "connected to Kafka" | grep -q "mutual TLS" ||
    fail "$service did not log a connection over mutual TLS"
done
# No line of any private key may reach a log.
while read -r line; do
  [[ $line == -----* ]] && continue
  grep -qF -- "$line" <<<"$managed_log" && fail "a line of a private key appears in the logs"
done < <(cat "$pki/service.key" "$pki/broker.key")
grep -q "PRIVATE KEY" <<<"$managed_log" && fail "a private key appears in the logs"
[[ $(psql_q "SELECT count(*) - count(DISTINCT probe_id) FROM metrics") == 0 ]] || fail "a probe id is doubled through the managed Kafka"
say "rows arrive through the managed Kafka over mutual TLS; no key material in the logs"
"${managed[@]}" down --remove-orphans >/dev/null 2>&1

for image in sitewatch-monitor sitewatch-consumer sitewatch-status; do
  say "$image image: $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"
done
say "image build $build_time s; first row $first_row s after up"
say "passed"
