-- title: Developments by topic (newest first)
-- One row per development: what is new about a story on a tracked topic, where it was reported.
SELECT d.first_seen, d.kind, d.topic, d.title, d.url, coalesce(d.outlet, d.source_id) AS outlet, d.lang,
       CAST(coalesce(json_extract(d.what_is_new, '$.new_facts.names'),
                     json_extract(d.what_is_new, '$.facts.names')) AS VARCHAR[]) AS new_names,
       CAST(coalesce(json_extract(d.what_is_new, '$.new_facts.numbers'),
                     json_extract(d.what_is_new, '$.facts.numbers')) AS VARCHAR[]) AS new_numbers,
       json_extract_string(d.what_is_new, '$.basis') AS basis,
       round(d.score, 3) AS score, d.story_id, s.title AS story_title
FROM developments d
LEFT JOIN stories s ON s.id = d.story_id
ORDER BY d.first_seen DESC, d.id
LIMIT 1000;
