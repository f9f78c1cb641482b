-- title: What matched each topic and why (latest 200 tags)
SELECT t.tagged_at, t.topic, a.title, a.lang, round(t.score, 2) AS score,
       json_extract_string(t.explanation, '$.terms') AS matched_terms,
       json_extract_string(t.explanation, '$.fields') AS in_fields,
       json_extract_string(t.explanation, '$.snippet') AS snippet
FROM article_topics t JOIN articles a ON a.id = t.article_id
ORDER BY t.tagged_at DESC, t.score DESC
LIMIT 200;
