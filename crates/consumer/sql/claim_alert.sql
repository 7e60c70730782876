-- The notification due longest to one of this sender's webhooks ($1): one a
-- webhook keeps failing goes behind the others after each attempt. Skipping
-- those another sender holds, the webhooks it is backing off from ($2), and
-- any that has an older notification of the same site to the same webhook
-- still pending: a site's notifications arrive in order. A webhook this
-- consumer does not have is left for one that does.
SELECT o.id, o.webhook, o.payload, o.refusals
FROM alert_outbox o
WHERE o.sent_at IS NULL AND o.failed_at IS NULL
  AND o.next_attempt_at <= now()
  AND o.webhook = ANY ($1::text[])
  AND o.webhook <> ALL ($2::text[])
  AND NOT EXISTS (
      SELECT 1 FROM alert_outbox p
      WHERE p.website_id = o.website_id AND p.webhook = o.webhook AND p.id < o.id
        AND p.sent_at IS NULL AND p.failed_at IS NULL)
ORDER BY o.next_attempt_at, o.id
LIMIT 1
FOR UPDATE OF o SKIP LOCKED
