"""pgvector-python against Quiver, unchanged: `register_vector` finds the
`vector` type through pg_type/to_regtype, numpy arrays bind as vectors in
text and binary format, and results come back as `Vector` objects."""

from __future__ import annotations

import numpy as np
import pytest
from pgvector.psycopg import register_vector

TABLE = "pgv_items"


@pytest.fixture
def conn(module_quiver):
    with module_quiver.connect() as conn:
        register_vector(conn)
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, embedding vector(3))")
        yield conn


def test_register_vector_and_round_trip(conn):
    rows = [(1, np.array([1, 2, 3], dtype=np.float32)), (2, np.array([9, 9, 9], dtype=np.float32))]
    conn.cursor().executemany(f"INSERT INTO {TABLE} (id, embedding) VALUES (%s, %s)", rows)
    # binary parameters: pgvector's binary layout
    conn.cursor(binary=True).execute(
        f"INSERT INTO {TABLE} (id, embedding) VALUES (%s, %s)", (3, np.array([0.5, 0.25, 1], dtype=np.float32))
    )
    got = conn.execute(f"SELECT id, embedding FROM {TABLE} ORDER BY id").fetchall()
    assert [r[0] for r in got] == [1, 2, 3]
    assert np.array_equal(got[2][1].to_numpy(), np.array([0.5, 0.25, 1], dtype=np.float32))
    binary = conn.cursor(binary=True).execute(f"SELECT embedding FROM {TABLE} WHERE id = 2").fetchone()[0]
    assert np.array_equal(binary.to_numpy(), np.array([9, 9, 9], dtype=np.float32))


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_knn_with_numpy_query(conn, binary):
    rng = np.random.default_rng(11)
    data = rng.standard_normal((300, 3)).astype(np.float32)
    with conn.cursor().copy(f"COPY {TABLE} (id, embedding) FROM STDIN") as copy:
        for i, v in enumerate(data):
            copy.write_row((i, "[" + ",".join(repr(float(x)) for x in v) + "]"))
    q = rng.standard_normal(3).astype(np.float32)
    cur = conn.cursor(binary=binary)
    ids = [r[0] for r in cur.execute(
        f"SELECT id FROM {TABLE} ORDER BY embedding <-> %s LIMIT 5", (q,)
    ).fetchall()]
    assert ids == np.argsort(((data - q) ** 2).sum(axis=1))[:5].tolist()
    cos = cur.execute(f"SELECT embedding <=> %s FROM {TABLE} WHERE id = 0", (q,)).fetchone()[0]
    expected = 1 - float(data[0] @ q) / (np.linalg.norm(data[0]) * np.linalg.norm(q))
    assert cos == pytest.approx(expected, rel=1e-5)
