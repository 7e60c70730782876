INSERT INTO metrics SELECT * FROM metrics_staging ON CONFLICT (probe_id) DO NOTHING
