#!/usr/bin/env bash
# The consumer's write pattern without the consumer: 1,000,000 metrics rows
# (UUIDv7-like ids, 5,000 sites, in time order) in 200 files of 5,000, loaded
# by `\copy` of the consumer's columns, one transaction per file, from two
# psql sessions at once, into a fresh database made by the migrations up to
# each version given. Rounds take the versions by turns, the order turning
# each round; each load prints its wall time and PostgreSQL's CPU, and the
# end prints each version's median and its per-round ratio to the first.
#
#   scripts/copy-pattern.sh [ROUNDS] [VERSION...]    (default: 5 V3 V7)
#
# A version is the last migration applied (V3: the release before
# partitioning), optionally followed by a colon and SQL run after the
# migrations, to take a part away: 'V7:DROP INDEX metrics_times'. Needs PostgreSQL 15 (scripts/setup.sh installs it); runs
# the server as the `postgres` user in a temporary folder, port 15433, with
# its defaults and PG_OPTS (e.g. PG_OPTS='-c autovacuum=off'). ORDER=kafka
# orders each file's rows as a consumer's batch holds them: a run from each
# of 50 Kafka partitions in turn, so that times go back and forth (default:
# time order). FORMAT=binary loads the files in COPY's binary format, as the
# consumer sends them (default: text).
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C

rounds=${1:-5}
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "copy-pattern: ROUNDS must be a whole number, not '$rounds'" >&2; exit 2; }
shift || true
versions=("$@")
((${#versions[@]})) || versions=(V3 V7)
for v in "${versions[@]}"; do
  ls crates/db/migrations/"${v%%:*}"__*.sql >/dev/null 2>&1 ||
    { echo "copy-pattern: no migration ${v%%:*} in crates/db/migrations" >&2; exit 2; }
done

# PostgreSQL 15, as the compose image runs (the WAL figures read
# pg_stat_bgwriter's checkpoint count, which later versions moved).
bin=/usr/lib/postgresql/15/bin
[[ -x $bin/postgres ]] || { echo "copy-pattern: PostgreSQL 15 not found in $bin (scripts/setup.sh installs it)" >&2; exit 2; }
dir=$(mktemp -d /tmp/copy-pattern.XXXXXX)
as_pg() { su postgres -s /bin/bash -c "$*"; }
trap 'as_pg "$bin/pg_ctl -D $dir/data stop -m fast" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
chown postgres "$dir"
as_pg "$bin/initdb -D $dir/data -A trust -U postgres" >/dev/null
as_pg "$bin/pg_ctl -D $dir/data -o '-p 15433 -k $dir -c listen_addresses= ${PG_OPTS:-}' -l $dir/log -w start" >/dev/null
pm=$(head -1 "$dir/data/postmaster.pid")
psql_() { psql -h "$dir" -p 15433 -U postgres -q -v ON_ERROR_STOP=1 "$@"; }

# A database with the migrations up to version $2 (and its SQL after them)
# and the sites the rows refer to.
make_db() {
  local db=$1 last=${2%%:*} after=
  [[ $2 == *:* ]] && after=${2#*:}
  psql_ -c "CREATE DATABASE $db"
  for file in $(ls crates/db/migrations/V*__*.sql | sort -V); do
    psql_ -d "$db" -1 -f "$file"
    [[ $(basename "$file") == "${last}__"* ]] && break
  done
  [[ -z $after ]] || psql_ -d "$db" -c "$after"
  psql_ -d "$db" -c "INSERT INTO websites (url) SELECT 'https://site-' || i || '.example/' FROM generate_series(1, 5000) i"
}

# The rows, made once in a V3 database and exported in time order; dated
# tomorrow, which every version's partitions made ahead hold, whenever the
# databases are made.
cols=probe_id,website_id,schema_version,scheduled_at,started_at,lateness_us,skipped_before,dns_us,connect_us,ttfb_us,body_us,total_us,status,body_bytes,body_truncated,regex,regex_matched,regex_match,final_url,redirects,tls_expires_at,error_kind,error_message,kafka_topic,kafka_partition,kafka_offset,up,failed,failure_threshold,success_threshold
make_db rows V3
psql_ -d rows -c "INSERT INTO metrics ($cols)
  SELECT (lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0') || '7' || substr(md5(i::text), 1, 19))::uuid,
         1 + i % 5000, 1, t - interval '300 us', t, 300, 0, 200, 3000, 20000, 400, 23600 + i % 997, 200, 1234, false,
         CASE WHEN i % 3 = 0 THEN 'ok' END, CASE WHEN i % 3 = 0 THEN true END, NULL, NULL, 0,
         now() + interval '60 days', NULL, NULL, 'bench', i % 50, i / 50, true, NULL, 3, 2
  FROM generate_series(1, 1000000) i, LATERAL (SELECT date_trunc('day', now(), 'UTC') + interval '25 hours' + i * interval '1 ms' AS t) x"
mkdir -p "$dir/files"
chmod 777 "$dir" "$dir/files"
case ${ORDER:-time} in
  time) order="started_at" ;;
  # 5,000 rows are 100 offsets of each of the 50 partitions.
  kafka) order="kafka_offset / 100, kafka_partition, kafka_offset" ;;
  *) echo "copy-pattern: ORDER is time or kafka, not '$ORDER'" >&2; exit 2 ;;
esac
case ${FORMAT:-text} in
  text | binary) ;;
  *) echo "copy-pattern: FORMAT is text or binary, not '$FORMAT'" >&2; exit 2 ;;
esac
# The rows numbered in the load's order, exported 5,000 to a file.
psql_ -d rows -c "CREATE TABLE ordered AS SELECT row_number() OVER (ORDER BY $order) AS n, $cols FROM metrics; CREATE INDEX ON ordered (n)"
for ((f = 0; f < 200; f++)); do
  echo "\\copy (SELECT $cols FROM ordered WHERE n > $((f * 5000)) AND n <= $(((f + 1) * 5000)) ORDER BY n) TO '$dir/files/b$(printf %03d $f)' WITH (FORMAT ${FORMAT:-text})"
done | psql_ -d rows
psql_ -c "DROP DATABASE rows"
for w in 0 1; do
  i=0
  for f in "$dir"/files/b*; do
    if ((i++ % 2 == w)); then echo "\\copy metrics ($cols) FROM '$f' WITH (FORMAT ${FORMAT:-text})"; fi
  done >"$dir/w$w.sql"
done

# CPU ticks of this server's processes, and of those already reaped.
ticks() {
  local total=0 fields
  for p in $(pgrep -P "$pm"); do
    read -ra fields <<<"$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null || echo)"
    ((${#fields[@]} > 12)) && total=$((total + fields[11] + fields[12]))
  done
  read -ra fields <<<"$(sed 's/.*) //' "/proc/$pm/stat")"
  echo $((total + fields[13] + fields[14]))
}

# Wall times per version, by its place in the list (a version may be given twice, to see the spread).
declare -A walls
for ((r = 0; r < rounds; r++)); do
  for ((k = 0; k < ${#versions[@]}; k++)); do
    x=$(((k + r) % ${#versions[@]}))
    v=${versions[x]}
    db=load_$x
    make_db "$db" "$v"
    psql_ -d "$db" -c CHECKPOINT
    # WAL written, and checkpoints its volume forced (each makes the next
    # change of every page log the whole page).
    read -r lsn0 forced0 <<<"$(psql_ -d "$db" -At -F ' ' -c "SELECT pg_current_wal_lsn(), checkpoints_req FROM pg_stat_bgwriter")"
    c0=$(ticks)
    t0=$(date +%s.%N)
    psql_ -d "$db" -f "$dir/w0.sql" &
    psql_ -d "$db" -f "$dir/w1.sql" &
    wait
    t1=$(date +%s.%N)
    # The loaders' sessions gone, so that each is counted once, reaped.
    while pgrep -P "$pm" -f " $db " >/dev/null; do sleep 0.05; done
    c1=$(ticks)
    read -r wal forced <<<"$(psql_ -d "$db" -At -F ' ' -c "SELECT pg_current_wal_lsn() - '$lsn0', checkpoints_req - $forced0 FROM pg_stat_bgwriter")"
    n=$(psql_ -d "$db" -At -c "SELECT count(*) FROM metrics")
    [[ $n == 1000000 ]] || { echo "copy-pattern: '$v' holds $n rows, not 1000000" >&2; exit 1; }
    wall=$(awk "BEGIN { print $t1 - $t0 }")
    walls[$x]+="$wall "
    printf "round %d '%s': %.2f s, PostgreSQL CPU %.2f s, WAL %d MB, %d checkpoints forced by WAL\n" $((r + 1)) "$v" "$wall" \
      "$(awk "BEGIN { print ($c1 - $c0) / $(getconf CLK_TCK) }")" $((wal / 1000000)) "$forced"
    psql_ -c "DROP DATABASE $db"
  done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
read -ra base <<<"${walls[0]}"
for x in "${!versions[@]}"; do
  read -ra these <<<"${walls[$x]}"
  ratios=""
  for ((r = 0; r < rounds; r++)); do ratios+="$(printf '%.2f' "$(awk "BEGIN { print ${base[r]} / ${these[r]} }")") "; done
  printf "'%s': median %.2f s; rate / '%s' per round: %s(median %.2f)\n" "${versions[x]}" "$(echo "${walls[$x]}" | median)" "${versions[0]}" "$ratios" "$(echo "$ratios" | median)"
done
