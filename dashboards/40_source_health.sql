-- title: Source health
-- failing: the last poll failed; silent: no new article for 3 days; slow: polls take over 3 s on average.
SELECT name, id, url, last_success, last_new_article, consecutive_failures, last_error,
       round(avg_latency_ms) AS avg_latency_ms, round(not_modified_ratio, 2) AS not_modified_ratio, polls,
       next_poll_after,
       list_filter([
           CASE WHEN consecutive_failures > 0 THEN 'failing' END,
           CASE WHEN polls > 0 AND coalesce(last_new_article, TIMESTAMPTZ '1970-01-01')
                    < now() - INTERVAL 3 DAY THEN 'silent' END,
           CASE WHEN avg_latency_ms > 3000 THEN 'slow' END
       ], x -> x IS NOT NULL) AS problems
FROM source_health
ORDER BY len(problems) DESC, consecutive_failures DESC, name;
