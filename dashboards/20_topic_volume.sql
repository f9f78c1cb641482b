-- title: Topic volume per day and language
-- Rows with topic NULL count each article once across all topics (for the "all topics" view).
SELECT CAST(coalesce(a.published, a.first_seen) AS DATE) AS day, t.topic, coalesce(a.lang, '?') AS lang,
       count(DISTINCT a.id) AS articles
FROM article_topics t JOIN articles a ON a.id = t.article_id
WHERE a.status IN ('ok', 'duplicate')
GROUP BY GROUPING SETS ((day, t.topic, lang), (day, lang))
ORDER BY day DESC, t.topic NULLS FIRST, articles DESC, lang;
