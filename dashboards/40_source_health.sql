-- title: Source health
SELECT name, url, last_success, last_new_article, consecutive_failures, last_error,
       round(avg_latency_ms) AS avg_latency_ms, round(not_modified_ratio, 2) AS not_modified_ratio
FROM source_health
ORDER BY consecutive_failures DESC, name;
