"""The direct k-NN path (frontend/src/knn_fast_path.rs) must answer exactly
as the planned path does. `OFFSET 0` keeps a statement off the direct
path, so every statement is run both ways and compared: metrics, `*`,
aliases, qualified and quoted names, WHERE filters (selective and broad),
NULL and zero vectors, ties, LIMIT larger than the table, growing and
sealed (indexed) parts, bound parameters, and a transaction block's own
writes (which the direct path leaves to the planned one)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import wait_for_index_builds


def lit(v) -> str:
    return "[" + ",".join(f"{x:.4f}" for x in v) + "]"


@pytest.fixture(scope="module")
def server(module_quiver_factory):
    srv = module_quiver_factory(extra_args=["--seal-rows", "1500"], start=False)
    # The direct path logs each statement it serves at debug level.
    srv.env["RUST_LOG"] = "info,quiver_frontend::knn_fast_path=debug"
    srv.start()
    rng = np.random.default_rng(11)
    data = rng.standard_normal((4000, 8)).astype(np.float32)
    with srv.connect() as conn:
        conn.execute('CREATE TABLE "Items" (id bigint PRIMARY KEY, tag text, embedding vector(8))')
        with conn.cursor().copy('COPY "Items" (id, tag, embedding) FROM STDIN') as copy:
            for i, row in enumerate(data):
                copy.write_row((i, f"t{i % 5}", lit(row)))
            copy.write_row((4000, "null", None))
            copy.write_row((4001, "zero", lit([0] * 8)))
        conn.execute("CHECKPOINT")
        conn.execute('CREATE INDEX ON "Items" USING diskann (embedding vector_l2_ops)')
        # Both paths must see the same parts: wait for the index builds.
        wait_for_index_builds(conn)
        # Rows after the seal stay in growing segments.
        conn.execute("""INSERT INTO "Items" VALUES (5000, 'late', '[1,1,1,1,1,1,1,1]'), (5001, 'late', '[1,1,1,1,1,1,1,1]')""")
    return srv


QUERIES = [
    'SELECT id FROM "Items" ORDER BY embedding <-> {q} LIMIT 10',
    'SELECT id, embedding <-> {q} AS d FROM "Items" ORDER BY embedding <-> {q} LIMIT 25',
    'SELECT *, embedding <=> {q} AS cos FROM "Items" ORDER BY embedding <=> {q} LIMIT 7',
    'SELECT *, embedding <-> {q} FROM "Items" ORDER BY embedding <-> {q} LIMIT 7',
    'SELECT i.id, i.tag AS "Tag" FROM public."Items" i ORDER BY i.embedding <#> {q} ASC LIMIT 12',
    'SELECT tag, id FROM "Items" ORDER BY embedding <-> {q}::vector LIMIT 5000',
    "SELECT id, tag FROM \"Items\" WHERE tag = 't3' ORDER BY embedding <-> {q} LIMIT 10",
    'SELECT id FROM "Items" i WHERE i.id % 100 = 7 AND i.tag IS NOT NULL ORDER BY i.embedding <-> {q} LIMIT 10',
    'SELECT id, embedding <-> {q} AS d FROM "Items" WHERE id BETWEEN 100 AND 3900 ORDER BY embedding <-> {q} LIMIT 20',
    "SELECT ID, Items.TAG FROM \"Items\" Items WHERE coalesce(tag, '') <> 't1' ORDER BY embedding <-> {q}::vector(8) LIMIT 6",
    'SELECT id FROM "Items" ORDER BY embedding <-> {q} LIMIT 10000000000000',
]


def direct_runs(server) -> int:
    """Statements the direct path has served so far (from the server log)."""
    return server.log_path.read_text(errors="replace").count("direct k-NN path")


def planned(sql: str) -> str:
    """The same statement, kept on the planned path."""
    return sql + " OFFSET 0"


@pytest.mark.parametrize("sql", QUERIES)
def test_direct_path_answers_like_the_planned_path(server, sql):
    rng = np.random.default_rng(3)
    with server.connect() as conn:
        for q in [rng.standard_normal(8), np.zeros(8), np.ones(8), rng.standard_normal(8)]:
            text = f"'{lit(q)}'"
            before = direct_runs(server)
            direct = conn.execute(sql.format(q=text))
            # Function calls in WHERE keep a statement on the planned path.
            assert direct_runs(server) == before + ("coalesce" not in sql), sql
            names = [c.name for c in direct.description]
            rows = direct.fetchall()
            before = direct_runs(server)
            general = conn.execute(planned(sql.format(q=text)))
            assert direct_runs(server) == before
            assert [c.name for c in general.description] == names
            if "SELECT *, embedding <->" in sql:
                assert names == ["id", "tag", "embedding", "?column?"]
            if "SELECT ID" in sql:
                assert names == ["id", "tag"]
            expected = general.fetchall()
            if "<=>" in sql and not np.any(q):
                # Cosine distance to the zero vector is NaN for every row:
                # any k rows are a correct answer.
                assert len(rows) == len(expected)
                continue
            # Ties (rows 5000 and 5001 are equal) may be listed in either order.
            assert sorted(map(repr, rows)) == sorted(map(repr, expected)), sql
            assert len(rows) == len(expected)


def test_bound_parameters_take_the_direct_path_with_equal_results(server):
    rng = np.random.default_rng(5)
    with server.connect() as conn:
        for _ in range(10):  # psycopg prepares the statement after 5 runs
            q = lit(rng.standard_normal(8))
            got = conn.execute(
                'SELECT id, embedding <-> %s AS d FROM "Items" ORDER BY embedding <-> %s LIMIT 10', (q, q)
            ).fetchall()
            want = conn.execute(
                planned('SELECT id, embedding <-> %s AS d FROM "Items" ORDER BY embedding <-> %s LIMIT 10'), (q, q)
            ).fetchall()
            assert [d for _, d in got] == [d for _, d in want]
            assert sorted(got) == sorted(want)


PARAMETERIZED = [
    ('SELECT id, tag FROM "Items" ORDER BY embedding <-> %s LIMIT %s', lambda q: (q, 10)),
    ('SELECT id FROM "Items" WHERE tag = %s ORDER BY embedding <-> %s LIMIT 10', lambda q: ("t2", q)),
    ('SELECT * FROM "Items" WHERE id > %s ORDER BY embedding <=> %s LIMIT %s', lambda q: (2000, q, 8)),
]


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("sql,args", PARAMETERIZED)
def test_parameters_are_used_as_bound(server, sql, args, binary):
    """The vector, the LIMIT and WHERE values as bound parameters (text, or
    pgvector's binary format through register_vector): served directly,
    from the values as they are, with the planned path's answer."""
    from pgvector.psycopg import register_vector

    rng = np.random.default_rng(7)
    with server.connect() as conn:
        register_vector(conn)
        for _ in range(7):  # psycopg prepares the statement after 5 runs
            v = rng.standard_normal(8).astype(np.float32)
            q = v if binary else lit(v)
            before = direct_runs(server)
            got = conn.execute(sql, args(q), binary=binary).fetchall()
            assert direct_runs(server) == before + 1, sql
            want = conn.execute(planned(sql), args(q), binary=binary).fetchall()
            assert len(got) == len(want) > 0
            assert sorted(map(repr, got)) == sorted(map(repr, want)), sql


def test_a_transaction_sees_its_own_writes(server):
    with server.connect(autocommit=False) as conn:
        conn.execute("""INSERT INTO "Items" VALUES (9000, 'mine', '[9,9,9,9,9,9,9,9]')""")
        top = conn.execute("""SELECT id FROM "Items" ORDER BY embedding <-> '[9,9,9,9,9,9,9,9]' LIMIT 1""").fetchone()
        assert top == (9000,)
        conn.rollback()
        top = conn.execute("""SELECT id FROM "Items" ORDER BY embedding <-> '[9,9,9,9,9,9,9,9]' LIMIT 1""").fetchone()
        assert top != (9000,)


def test_errors_match_the_planned_path(server):
    import psycopg

    with server.connect() as conn:
        for sql in ["""SELECT id FROM "Items" ORDER BY embedding <-> '[1,2]' LIMIT 3""",
                    """SELECT nope FROM "Items" ORDER BY embedding <-> '[1,1,1,1,1,1,1,1]' LIMIT 3""",
                    """SELECT id FROM "Items" WHERE nope = 1 ORDER BY embedding <-> '[1,1,1,1,1,1,1,1]' LIMIT 3""",
                    """SELECT id FROM "Items" WHERE tag = 5 + 'x' ORDER BY embedding <-> '[1,1,1,1,1,1,1,1]' LIMIT 3""",
                    """SELECT id FROM "Items" WHERE id ORDER BY embedding <-> '[1,1,1,1,1,1,1,1]' LIMIT 3"""]:
            with pytest.raises(psycopg.Error) as direct:
                conn.execute(sql)
            with pytest.raises(psycopg.Error) as general:
                conn.execute(planned(sql))
            assert direct.value.sqlstate == general.value.sqlstate


def test_zero_vector_ranks_last_in_a_cosine_index(server):
    """A zero vector's cosine distance is NaN, which sorts last, also when
    its segment is searched by a cosine index (which holds it as a zero
    vector at squared distance 1 from a unit query, i.e. "0.5")."""
    with server.connect() as conn:
        conn.execute("CREATE TABLE cos_zero (id bigint PRIMARY KEY, v vector(3))")
        # Every other row is over 60 degrees from the query (distance > 0.5).
        rows = ", ".join(f"({i}, '[1,{2 + i % 5},{3 + i % 7}]')" for i in range(1, 3000))
        conn.execute(f"INSERT INTO cos_zero VALUES (0, '[0,0,0]'), {rows}")
        conn.execute("CHECKPOINT")
        conn.execute("CREATE INDEX ON cos_zero USING diskann (v vector_cosine_ops)")
        wait_for_index_builds(conn)
        conn.execute("SET diskann.search_list = 20")
        sql = "SELECT id FROM cos_zero ORDER BY v <=> '[1,0,0]' LIMIT 5"
        plan = "\n".join(" ".join(map(str, r)) for r in conn.execute("EXPLAIN " + sql))
        assert "graph search" in plan, plan
        direct = [r[0] for r in conn.execute(sql)]
        general = [r[0] for r in conn.execute(planned(sql))]
        assert 0 not in direct and 0 not in general
        assert len(direct) == 5 and sorted(direct) == sorted(general)
        conn.execute("RESET diskann.search_list")
        conn.execute("DROP TABLE cos_zero")


def test_empty_select_list(server):
    with server.connect() as conn:
        rows = conn.execute('SELECT FROM "Items" ORDER BY embedding <-> \'[1,1,1,1,1,1,1,1]\' LIMIT 3').fetchall()
        assert rows == [(), (), ()]
