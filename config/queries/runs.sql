-- title: Last 20 runs
SELECT run_id, started_at, status, seconds, articles_stored, failed, developments, alerts_sent, error
FROM run_history
LIMIT 20;
