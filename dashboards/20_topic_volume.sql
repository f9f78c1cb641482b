-- title: Topic volume per day and language
SELECT CAST(coalesce(a.published, a.first_seen) AS DATE) AS day, t.topic, a.lang, count(*) AS articles
FROM article_topics t JOIN articles a ON a.id = t.article_id
WHERE a.status IN ('ok', 'duplicate')
GROUP BY ALL
ORDER BY day DESC, t.topic, articles DESC;
