UPDATE incidents SET resolved_at = $2, resolved_by = $3
WHERE id = $1 AND resolved_at IS NULL
RETURNING opened_at, failed_condition, failed_message
