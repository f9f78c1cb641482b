-- title: Developments (newest first)
SELECT first_seen, kind, topic, title, url, outlet, lang,
       coalesce(json_extract_string(what_is_new, '$.new_facts.names'),
                json_extract_string(what_is_new, '$.facts.names')) AS what_is_new
FROM developments
ORDER BY first_seen DESC, id
LIMIT 500;
