-- title: Stories
SELECT s.title, s.first_seen, s.last_seen,
       count(DISTINCT a.source_id) AS sources,
       string_agg(DISTINCT a.lang, ', ' ORDER BY a.lang) AS languages,
       count(*) AS articles,
       (SELECT count(*) FROM development_events d WHERE d.story_id = s.id AND d.kind = 'update') AS updates
FROM stories s JOIN articles a ON a.story_id = s.id
GROUP BY s.id, s.title, s.first_seen, s.last_seen
ORDER BY s.last_seen DESC
LIMIT 200;
