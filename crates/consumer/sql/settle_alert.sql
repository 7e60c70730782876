-- One attempt's outcome: sent ($2), given up ($3), or due again $4 seconds
-- from now: the clock after the send, not the transaction's start before it.
-- $5 counts the attempt as a refusal (a 4xx), which alone can give it up.
UPDATE alert_outbox
SET attempts = attempts + 1,
    refusals = refusals + CASE WHEN $5 THEN 1 ELSE 0 END,
    sent_at = CASE WHEN $2 THEN clock_timestamp() END,
    failed_at = CASE WHEN $3 THEN clock_timestamp() END,
    next_attempt_at = clock_timestamp() + make_interval(secs => $4::float8),
    last_error = $6
WHERE id = $1
