-- title: Stories
-- A story groups the reports of one event; `updates` counts the developments flagged as updates.
SELECT s.id AS story_id, s.title, fa.url, s.first_seen, s.last_seen, s.topics,
       count(DISTINCT a.source_id) AS sources,
       list(DISTINCT a.lang ORDER BY a.lang) FILTER (WHERE a.lang IS NOT NULL) AS languages,
       count(*) AS articles,
       (SELECT count(*) FROM development_events d WHERE d.story_id = s.id AND d.kind = 'update') AS updates,
       s.surged
FROM stories s
JOIN articles a ON a.story_id = s.id
LEFT JOIN articles fa ON fa.id = s.first_article_id
GROUP BY ALL
ORDER BY s.last_seen DESC, s.id
LIMIT 500;
