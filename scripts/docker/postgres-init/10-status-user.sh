#!/usr/bin/env bash
# Run once, when the PostgreSQL container makes its database (a file of
# /docker-entrypoint-initdb.d): the status page's own login, a member of
# the read role and nothing else, so that the status service never holds a
# session that could write. The consumer's migrations make the role too
# when it is missing, and grant it what the page reads (README, "The
# status page").
set -euo pipefail
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set user="${STATUS_POSTGRES_USER:-sitewatch_status}" \
  --set password="${STATUS_POSTGRES_PASSWORD:?STATUS_POSTGRES_PASSWORD must be set}" <<'SQL'
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sitewatch_read') AS missing \gset
\if :missing
CREATE ROLE sitewatch_read NOLOGIN;
\endif
CREATE ROLE :"user" LOGIN PASSWORD :'password' IN ROLE sitewatch_read;
SQL
