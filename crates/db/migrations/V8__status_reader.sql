-- What the status service may read, and nothing more: a role without login
-- that the service takes on (SET ROLE) in every session, which can read the
-- state, incidents, rollups and the public columns of the metrics, and the
-- sites only through `status_sites`, whose check options leave out every
-- value that may be a credential (header values, basic auth, request
-- bodies, a password in the URL). It can write nothing.
--
-- Roles belong to the whole cluster: the role is made only if missing, and
-- where the migrating user may not make roles (some managed PostgreSQL
-- services), the migration warns and goes on; an administrator then makes
-- it, and the owner of these tables grants it what it reads with
-- `SELECT status_reader_grants()`, as README says.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sitewatch_read') THEN
        CREATE ROLE sitewatch_read NOLOGIN;
    END IF;
    -- So that a migrating user that is not a superuser may SET ROLE to it.
    IF NOT pg_has_role(current_user, 'sitewatch_read', 'MEMBER') THEN
        EXECUTE format('GRANT sitewatch_read TO %I', current_user);
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'cannot make the role sitewatch_read (%): the status service needs it; see README, "The status page"', SQLERRM;
END
$$;

-- A site as the status page shows it. The URL's user information (a user
-- and password, or a token in the user's place) is masked whole, up to the
-- last `@` before the path, as URL parsers split it; of the check options
-- only those that say what is checked are kept, and of the headers only
-- their names.
CREATE VIEW status_sites AS
SELECT w.id,
       regexp_replace(w.url, '^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#]*@', '\1***@') AS url,
       w.interval_seconds,
       w.regex,
       w.timeout_seconds,
       w.enabled,
       jsonb_strip_nulls(jsonb_build_object(
           'method', w.checks -> 'method',
           'headers', (SELECT jsonb_agg(h ORDER BY h) FROM jsonb_object_keys(
                          CASE WHEN jsonb_typeof(w.checks -> 'headers') = 'object'
                               THEN w.checks -> 'headers' ELSE '{}' END) h),
           'body', CASE WHEN w.checks ? 'body' THEN to_jsonb(true) END,
           'basic_auth', CASE WHEN w.checks ? 'basic_auth' THEN to_jsonb(true) END,
           'expect_status', w.checks -> 'expect_status',
           'reject_regex', w.checks -> 'reject_regex',
           'json', w.checks -> 'json',
           'max_response_time', w.checks -> 'max_response_time',
           'min_cert_days', w.checks -> 'min_cert_days',
           'failure_threshold', w.checks -> 'failure_threshold',
           'success_threshold', w.checks -> 'success_threshold'
       )) AS checks
FROM websites w;

-- `site_uptime` by site id, for a role that cannot read `websites`: it runs
-- as its owner and reads nothing its caller names but the range. Its
-- search path is fixed to this schema with the caller's temporary schema
-- last: a caller's temporary table or view named `websites` would otherwise
-- come first and run as the owner.
CREATE FUNCTION status_uptime(since timestamptz, until timestamptz DEFAULT now())
RETURNS TABLE (
    website_id bigint,
    probes bigint,
    up bigint,
    uptime_pct numeric,
    latency_avg_ms numeric
)
LANGUAGE sql STABLE SECURITY DEFINER AS $$
SELECT w.id, u.probes, u.up, u.uptime_pct, u.latency_avg_ms
FROM site_uptime(since, until) u
JOIN websites w ON w.url = u.url
$$;
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION status_uptime(timestamptz, timestamptz) SET search_path = pg_catalog, %I, pg_temp',
                   current_schema());
END
$$;
REVOKE EXECUTE ON FUNCTION status_uptime(timestamptz, timestamptz) FROM PUBLIC;

-- What the role is granted; run again by an administrator who made the
-- role after this migration (README, "The status page"), and by any later
-- migration that makes one of these objects anew (a new object has no grants).
CREATE FUNCTION status_reader_grants() RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO sitewatch_read', current_schema());
    GRANT SELECT ON status_sites, site_state, incidents, metrics_hourly, metrics_daily, rollup_progress TO sitewatch_read;
    GRANT SELECT (probe_id, website_id, started_at, status, total_us, error_kind, error_message,
                  up, failed, regex_matched, tls_expires_at) ON metrics TO sitewatch_read;
    GRANT EXECUTE ON FUNCTION status_uptime(timestamptz, timestamptz) TO sitewatch_read;
END
$fn$;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'sitewatch_read') THEN
        PERFORM status_reader_grants();
    END IF;
END
$$;
