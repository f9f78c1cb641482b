-- title: Sources with no new article for 24 hours (or failing now)
SELECT id, name, last_new_article, last_success, consecutive_failures, last_error
FROM source_health
WHERE last_new_article IS NULL
   OR last_new_article < now() - INTERVAL 24 HOUR
   OR consecutive_failures > 0
ORDER BY last_new_article NULLS FIRST, id;
