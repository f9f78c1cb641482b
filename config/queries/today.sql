-- title: Today's developments (UTC), newest first
SELECT first_seen, kind, topic, title, outlet, lang, url
FROM developments
WHERE first_seen >= current_date
ORDER BY first_seen DESC, id;
