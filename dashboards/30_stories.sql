-- title: Stories
-- A story groups the reports of one event; `updates` counts the developments flagged as updates.
-- The 500 most recent stories are picked first, so only their articles are read (flat as the store grows).
WITH recent AS (SELECT * FROM stories ORDER BY last_seen DESC, id LIMIT 500)
SELECT s.id AS story_id, s.title, fa.url, s.first_seen, s.last_seen, s.topics,
       count(DISTINCT a.source_id) AS sources,
       list(DISTINCT a.lang ORDER BY a.lang) FILTER (WHERE a.lang IS NOT NULL) AS languages,
       count(*) AS articles,
       (SELECT count(*) FROM development_events d WHERE d.story_id = s.id AND d.kind = 'update') AS updates,
       s.surged
FROM recent s
JOIN articles a ON a.story_id = s.id
LEFT JOIN articles fa ON fa.id = s.first_article_id
GROUP BY ALL
ORDER BY s.last_seen DESC, s.id
LIMIT 500;
