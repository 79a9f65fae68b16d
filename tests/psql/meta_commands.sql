-- psql meta-commands against Quiver; the expected output is
-- meta_commands.out (tests/python/test_psql_script.py runs and compares it,
-- with \timing figures masked, in a scratch working directory).
\set ON_ERROR_STOP 1
CREATE TABLE psql_docs (id bigserial PRIMARY KEY, title text NOT NULL, embedding vector(3), score real DEFAULT 0);
CREATE INDEX psql_docs_embedding_idx ON psql_docs USING diskann (embedding vector_cosine_ops);
INSERT INTO psql_docs (title, embedding) VALUES ('a', '[1,0,0]'), ('b', '[0,1,0]'), ('c', '[0,0,1]');
\dt
\d psql_docs
\d+ psql_docs
\di
\dn
\l
\du
\dx
\dT
\copy psql_docs (title, embedding) TO 'psql_docs.csv' WITH (FORMAT csv)
TRUNCATE psql_docs;
\copy psql_docs (title, embedding) FROM 'psql_docs.csv' WITH (FORMAT csv)
SELECT title, embedding FROM psql_docs ORDER BY embedding <=> '[1,0.1,0]' LIMIT 2;
\timing on
SELECT count(*) FROM psql_docs;
\timing off
DROP TABLE psql_docs;
