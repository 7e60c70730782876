SELECT webhook, count(*)
FROM alert_outbox
WHERE sent_at IS NULL AND failed_at IS NULL AND webhook <> ALL ($1::text[])
GROUP BY webhook
