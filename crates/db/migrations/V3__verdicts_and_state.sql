-- Version 2 metrics carry the monitor's verdict against the site's checks.
-- Rows stored before this migration keep NULL here; readers apply the rule
-- those messages were made under (a response below 400 whose body matched
-- the regex, if any). Adding nullable columns rewrites nothing.
ALTER TABLE metrics
    ADD COLUMN up                boolean,
    ADD COLUMN failed            jsonb,
    ADD COLUMN failure_threshold smallint,
    ADD COLUMN success_threshold smallint;

-- A site's check options, the keys of a JSON site list entry other than
-- url, interval, regex and timeout (those keep their own columns).
ALTER TABLE websites ADD COLUMN checks jsonb CHECK (jsonb_typeof(checks) = 'object');

-- An outage: opened by the probe that reached the site's failure threshold,
-- resolved by the one that reached its success threshold.
CREATE TABLE incidents (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    website_id           bigint NOT NULL REFERENCES websites (id) ON DELETE CASCADE,
    opened_at            timestamptz NOT NULL,
    opened_by            uuid NOT NULL,
    failed_condition     text NOT NULL,
    failed_message       text NOT NULL,
    resolved_at          timestamptz,
    resolved_by          uuid,
    CHECK ((resolved_at IS NULL) = (resolved_by IS NULL))
);
CREATE INDEX incidents_website_opened ON incidents (website_id, opened_at DESC);
-- A site has at most one open incident.
CREATE UNIQUE INDEX incidents_open ON incidents (website_id) WHERE resolved_at IS NULL;

-- Each site's up/down state, moved by the consumer in the transaction that
-- stores the site's metrics, and only by probes newer than every one stored
-- before (each stored metric was applied when it was stored): a redelivered
-- or late probe never counts twice or moves the state back. Written only
-- when the state changes; `version` guards each write against a writer whose
-- view is out of date.
CREATE TABLE site_state (
    website_id            bigint PRIMARY KEY REFERENCES websites (id) ON DELETE CASCADE,
    up                    boolean NOT NULL,
    since                 timestamptz NOT NULL,
    consecutive_failures  integer NOT NULL CHECK (consecutive_failures >= 0),
    -- Counted while the site is down; 0 while it is up.
    consecutive_successes integer NOT NULL CHECK (consecutive_successes >= 0),
    open_incident_id      bigint REFERENCES incidents (id) ON DELETE SET NULL,
    version               bigint NOT NULL DEFAULT 1,
    CHECK (open_incident_id IS NULL OR NOT up)
) WITH (fillfactor = 50);

-- The view reads the monitor's verdict where the metric has one.
CREATE OR REPLACE VIEW site_status AS
SELECT w.url,
       last.started_at                                           AS last_probe_at,
       coalesce(last.status::text, last.error_kind)              AS last_result,
       round(last.total_us / 1000.0, 1)                          AS latency_ms,
       last.regex_matched                                        AS regex_ok,
       totals.probes,
       round(100.0 * totals.up / nullif(totals.probes, 0), 1)    AS uptime_pct
FROM websites w
CROSS JOIN LATERAL (
    SELECT m.started_at, m.status, m.error_kind, m.total_us, m.regex_matched
    FROM metrics m
    WHERE m.website_id = w.id
    ORDER BY m.started_at DESC
    LIMIT 1
) last
CROSS JOIN LATERAL (
    SELECT count(*) AS probes,
           count(*) FILTER (WHERE coalesce(m.up, m.status < 400 AND m.error_kind IS NULL AND m.regex_matched IS NOT FALSE)) AS up
    FROM metrics m
    WHERE m.website_id = w.id
) totals;

-- Notifications to send: one row per transition and webhook, written in the
-- transaction that moves the state, so a crash before the send loses none.
-- `webhook` is the webhook's id (its kind and a digest of its URL), never the
-- URL, which is a credential. A sender locks a row while it sends it
-- (FOR UPDATE SKIP LOCKED), so several consumers never send one row at once.
CREATE TABLE alert_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id     bigint NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    website_id      bigint NOT NULL,
    transition      text NOT NULL CHECK (transition IN ('down', 'up')),
    webhook         text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    -- Attempts the webhook refused (4xx), which alone give a row up.
    refusals        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    failed_at       timestamptz,
    last_error      text,
    UNIQUE (incident_id, transition, webhook)
);
-- What the senders look for: the notification due longest (without it, a
-- claim walks every row ever sent), and whether a site has an older one
-- pending to the same webhook.
CREATE INDEX alert_outbox_due ON alert_outbox (next_attempt_at, id)
    WHERE sent_at IS NULL AND failed_at IS NULL;
CREATE INDEX alert_outbox_pending ON alert_outbox (website_id, webhook, id)
    WHERE sent_at IS NULL AND failed_at IS NULL;
