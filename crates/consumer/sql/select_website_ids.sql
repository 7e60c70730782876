SELECT url, id FROM websites WHERE url = ANY($1::text[])
