-- Sites, one row per URL. A row with an interval is also a target the
-- monitor can probe (`monitor --targets postgres://...`); a site that only
-- ever appeared in metrics has no interval and is not probed.
CREATE TABLE websites (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url              text NOT NULL UNIQUE,
    interval_seconds double precision CHECK (interval_seconds > 0),
    regex            text,
    timeout_seconds  double precision CHECK (timeout_seconds > 0),
    enabled          boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- One row per probe: every field of the metric message (schema_version 1)
-- and the Kafka position it was read from. probe_id is a UUIDv7, unique, so
-- a redelivered message never makes a second row.
CREATE TABLE metrics (
    probe_id        uuid PRIMARY KEY,
    website_id      bigint NOT NULL REFERENCES websites (id),
    schema_version  smallint NOT NULL,
    scheduled_at    timestamptz NOT NULL,
    started_at      timestamptz NOT NULL,
    lateness_us     bigint NOT NULL,
    skipped_before  integer NOT NULL,
    dns_us          bigint,
    connect_us      bigint,
    ttfb_us         bigint,
    body_us         bigint,
    total_us        bigint NOT NULL,
    status          smallint,
    body_bytes      bigint NOT NULL,
    body_truncated  boolean NOT NULL,
    regex           text,
    regex_matched   boolean,
    regex_match     text,
    final_url       text,
    redirects       integer NOT NULL,
    tls_expires_at  timestamptz,
    error_kind      text CHECK (error_kind IN ('dns', 'connect', 'tls', 'timeout', 'redirect', 'body', 'other')),
    error_message   text,
    kafka_topic     text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now()
);

-- Serves both questions operators ask: the latest result of each site
-- (DISTINCT ON / LATERAL ... LIMIT 1) and one site's history over a range.
CREATE INDEX metrics_website_started ON metrics (website_id, started_at DESC);

-- Messages that can never become a metric row, kept whole with the reason.
CREATE TABLE dead_letters (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kafka_topic     text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    key             bytea,
    payload         bytea,
    reason          text NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kafka_topic, kafka_partition, kafka_offset)
);
