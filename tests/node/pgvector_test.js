// node-postgres (pg) with pgvector-node against a Quiver server whose port
// is the first argument: registerTypes, parameterized vector inserts and
// k-NN, named prepared statements, a rolled-back transaction and a
// SQLSTATE on bad input. Exits non-zero on the first failed assertion.
'use strict';
const pg = require('pg');
const pgvector = require('pgvector/pg');
const assert = require('assert');
(async () => {
  const client = new pg.Client({ host: '127.0.0.1', port: Number(process.argv[2]), user: 'postgres', database: 'postgres' });
  await client.connect();
  await pgvector.registerTypes(client);
  await client.query('DROP TABLE IF EXISTS node_items');
  await client.query('CREATE TABLE node_items (id bigserial PRIMARY KEY, embedding vector(3), name text)');
  await client.query('INSERT INTO node_items (embedding, name) VALUES ($1, $2), ($3, $4), ($5, $6)',
    [pgvector.toSql([1, 1, 1]), 'a', pgvector.toSql([2, 2, 2]), 'b', pgvector.toSql([1, 1, 2]), 'c']);
  const res = await client.query('SELECT id, name, embedding FROM node_items ORDER BY embedding <-> $1 LIMIT 5', [pgvector.toSql([1, 1, 1])]);
  assert.deepStrictEqual(res.rows.map(r => r.name), ['a', 'c', 'b']);
  assert.deepStrictEqual(res.rows[1].embedding, [1, 1, 2]);
  await client.query('BEGIN');
  await client.query('INSERT INTO node_items (embedding, name) VALUES ($1, $2)', [pgvector.toSql([3, 3, 3]), 'd']);
  await client.query('ROLLBACK');
  const count = await client.query('SELECT count(*) AS n FROM node_items');
  assert.strictEqual(Number(count.rows[0].n), 3);
  try { await client.query("SELECT '[1,2'::vector"); assert.fail('no error'); } catch (e) { assert.strictEqual(e.code, '22P02'); }
  const again = await client.query({ name: 'knn', text: 'SELECT name FROM node_items ORDER BY embedding <-> $1 LIMIT 1', values: [pgvector.toSql([2, 2, 2.1])] });
  assert.strictEqual(again.rows[0].name, 'b');
  await client.end();
  console.log('ok');
})().catch(e => { console.error(e); process.exit(1); });
