#!/usr/bin/env bash
# Entrypoint of sitewatch-local/postgres:15 (scripts/docker/postgres.Dockerfile): the
# basics of the official `postgres` image's docker-entrypoint.sh, for Debian's postgresql-15.
#
# - POSTGRES_USER (default postgres), POSTGRES_PASSWORD (required unless
#   POSTGRES_HOST_AUTH_METHOD=trust), POSTGRES_DB (default POSTGRES_USER), each also
#   readable from a file named by the same variable with _FILE appended;
#   POSTGRES_INITDB_ARGS (extra initdb arguments), POSTGRES_HOST_AUTH_METHOD
#   (default scram-sha-256).
# - On the first start (no $PGDATA/PG_VERSION) it runs initdb into $PGDATA
#   (/var/lib/postgresql/data, a volume), listens on every address, requires a password
#   (scram-sha-256) for every TCP connection and trusts the unix socket, creates
#   POSTGRES_DB, then runs /docker-entrypoint-initdb.d/*.sql and *.sh.
# - Later starts reuse the data as they find it.
# - The server runs as the postgres user, in the foreground, as PID 1 (exec), so the
#   container's stop signal reaches it: SIGINT (the image's STOPSIGNAL, fast shutdown)
#   or SIGTERM (smart shutdown) both end it with exit code 0.
# - The temporary server of the first start listens on a private socket only, so a
#   `pg_isready` healthcheck turns healthy only once the real server is up.
set -Eeuo pipefail

export PGDATA=${PGDATA:-/var/lib/postgresql/data}

log() { printf '%s [entrypoint] %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$*" >&2; }

# file_env VAR [DEFAULT]: VAR, else the contents of the file named by VAR_FILE, else DEFAULT.
file_env() {
  local var=$1 def=${2:-} fvar="${1}_FILE" val
  if [[ -n ${!var:-} && -n ${!fvar:-} ]]; then
    log "error: both $var and $fvar are set; set only one"
    exit 1
  fi
  val=$def
  if [[ -n ${!var:-} ]]; then
    val=${!var}
  elif [[ -n ${!fvar:-} ]]; then
    val=$(<"${!fvar}")
  fi
  export "$var=$val"
  unset "$fvar"
}

# `docker run IMAGE -c name=value` means the server with those options; any other
# command (bash, psql, ...) runs as given.
if [[ $# -eq 0 || ${1:0:1} == - ]]; then
  set -- postgres "$@"
fi
if [[ $1 != postgres ]]; then
  exec "$@"
fi

if [[ $(id -u) -eq 0 ]]; then
  # As root: make the data and socket directories the postgres user's, then start again as it.
  mkdir -p "$PGDATA" /var/run/postgresql
  find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
  chmod 700 "$PGDATA"
  chown postgres:postgres /var/run/postgresql
  chmod 3777 /var/run/postgresql
  export HOME=/var/lib/postgresql
  exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

if [[ ! -s $PGDATA/PG_VERSION ]]; then
  file_env POSTGRES_USER postgres
  file_env POSTGRES_PASSWORD
  file_env POSTGRES_DB "$POSTGRES_USER"
  auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
  if [[ -z $POSTGRES_PASSWORD && $auth != trust ]]; then
    log "error: the database is not initialized and POSTGRES_PASSWORD is empty;"
    log "set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust to allow any connection without one)"
    exit 1
  fi

  log "initializing $PGDATA for user $POSTGRES_USER, database $POSTGRES_DB"
  read -ra extra_args <<<"${POSTGRES_INITDB_ARGS:-}"
  pw_args=()
  pwfile=
  if [[ -n $POSTGRES_PASSWORD ]]; then
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    pw_args=(--pwfile="$pwfile")
  fi
  initdb --username="$POSTGRES_USER" "${pw_args[@]}" \
    --auth-local=trust --auth-host="$auth" "${extra_args[@]}"
  [[ -z $pwfile ]] || rm -f "$pwfile"

  {
    echo
    echo "# Added by the entrypoint: listen on every address."
    echo "listen_addresses = '*'"
  } >>"$PGDATA/postgresql.conf"
  {
    echo
    echo "# Added by the entrypoint: TCP connections from anywhere, with a password."
    echo "host all all all $auth"
  } >>"$PGDATA/pg_hba.conf"

  # A temporary server on a private socket only, for creating the database and running init scripts.
  init_socket=$(mktemp -d)
  pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories='$init_socket'" start
  export PGHOST=$init_socket PGUSER=$POSTGRES_USER PGDATABASE=postgres
  psql_init=(psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet)
  if [[ $POSTGRES_DB != postgres ]]; then
    "${psql_init[@]}" --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
  fi
  export PGDATABASE=$POSTGRES_DB
  for f in /docker-entrypoint-initdb.d/*; do
    [[ -e $f ]] || continue
    case $f in
      *.sh)
        log "running $f"
        # shellcheck disable=SC1090
        if [[ -x $f ]]; then "$f"; else . "$f"; fi
        ;;
      *.sql)
        log "running $f"
        "${psql_init[@]}" -f "$f"
        ;;
      *) log "ignoring $f" ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop
  unset PGHOST PGUSER PGDATABASE
  rmdir "$init_socket"
  log "initialized; starting the server"
else
  log "$PGDATA holds a database already; starting the server on it"
fi

unset POSTGRES_PASSWORD
exec "$@"
