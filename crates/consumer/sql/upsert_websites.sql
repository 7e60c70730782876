-- Sorted so that two consumers inserting overlapping sets lock in one order.
INSERT INTO websites (url)
SELECT u FROM unnest($1::text[]) AS u ORDER BY u
ON CONFLICT (url) DO NOTHING
