"""Result columns carry PostgreSQL's names and types, over both protocols.

Drivers that return rows as dictionaries (psycopg dict_row, pandas,
SQLAlchemy) key on these names, so they must be what PostgreSQL + pgvector
report for unaliased expressions.
"""

from __future__ import annotations

import psycopg
import pytest

TABLE = "cols_t"


@pytest.fixture(scope="module")
def server(module_quiver):
    with module_quiver.connect() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, v vector(2))")
        conn.execute(f"INSERT INTO {TABLE} VALUES (1, '[1,2]'), (2, '[3,4]')")
    return module_quiver


QUERY = (
    f"SELECT id, {TABLE}.v, v <-> '[0,0]', l2_distance(v, '[0,0]'), count(*) OVER () AS total, "
    f"v::text, avg(v) OVER () FROM {TABLE} ORDER BY id"
)
EXPECTED = ["id", "v", "?column?", "l2_distance", "total", "v", "avg"]


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
def test_unaliased_columns_are_named_like_postgres(server, prepare):
    with server.connect() as conn:
        cur = conn.cursor()
        if prepare:
            cur.execute(QUERY.replace("'[0,0]'", "%s"), ("[0,0]", "[0,0]"), prepare=True)
        else:
            cur.execute(QUERY)
        assert [d.name for d in cur.description] == EXPECTED
        rows = cur.fetchall()
        assert [r[0] for r in rows] == [1, 2]
        assert rows[1][2] == pytest.approx(5.0)
        assert rows[1][5] == "[3,4]"


def test_distance_and_vector_types(server):
    with server.connect() as conn:
        cur = conn.execute(f"SELECT v, v <-> '[0,0]', vector_dims(v) FROM {TABLE} LIMIT 1")
        type_names = [conn.adapters.types.get(d.type_code).name if conn.adapters.types.get(d.type_code) else d.type_code for d in cur.description]
        # distances are double precision, dims integer; vector reports pgvector's type
        assert type_names[1] == "float8"
        assert type_names[2] == "int4"


def test_version_names_quiver_in_postgres_format(server):
    with server.connect() as conn:
        version = conn.execute("SELECT version()").fetchone()[0]
        assert version.startswith("PostgreSQL 16."), version
        assert "Quiver" in version
        assert conn.execute("SHOW server_version").fetchone()[0] == version.split()[1]
        assert conn.info.server_version >= 160000


def test_current_setting_reads_the_session(server):
    with server.connect() as conn:
        conn.execute("SET diskann.search_list = 77")
        row = conn.execute(
            "SELECT current_setting('diskann.search_list'), current_setting('server_version'), "
            "current_setting('no.such', true)"
        ).fetchone()
        assert row == ("77", "16.6", None)
        with pytest.raises(psycopg.errors.UndefinedObject):
            conn.execute("SELECT current_setting('no.such')")
        assert conn.execute("SELECT 1").fetchone()[0] == 1


def test_reset_and_set_to_default(server):
    with server.connect() as conn:
        fresh = conn.execute("SHOW diskann.search_list").fetchone()[0]
        conn.execute("SET diskann.search_list = 77")
        conn.execute("RESET diskann.search_list")
        assert conn.execute("SHOW diskann.search_list").fetchone()[0] == fresh
        conn.execute("SET hnsw.ef_search = 55")
        assert conn.execute("SHOW diskann.search_list").fetchone()[0] == "55"
        conn.execute("SET hnsw.ef_search TO DEFAULT")
        # pgvector's knobs read as pgvector's defaults, as with pgvector.
        assert conn.execute("SELECT current_setting('hnsw.ef_search', true)").fetchone()[0] == "40"
        assert conn.execute("SHOW hnsw.ef_search").fetchone()[0] == "40"
        assert conn.execute("SHOW ivfflat.probes").fetchone()[0] == "1"
        assert conn.execute("SHOW diskann.search_list").fetchone()[0] == fresh == "100"
        conn.execute("SET diskann.search_list = 33")
        conn.execute("SET quiver.consistency = 'strong'")
        cur = conn.execute("RESET ALL", prepare=True)
        assert cur.statusmessage == "RESET"
        assert conn.execute("SHOW diskann.search_list").fetchone()[0] == fresh
        assert conn.execute("SHOW quiver.consistency").fetchone()[0] == "session"


def test_untyped_null_parameters_keep_their_places(server):
    """psycopg sends None untyped; a NULL of no known type must still be
    parameter $n (it used to be dropped, shifting the later ones)."""
    with server.connect() as conn:
        assert conn.execute("SELECT %s::text, coalesce(%s, 'x'), %s::text", [None, None, "z"]).fetchone() == (
            None,
            "x",
            "z",
        )
        conn.execute("DROP TABLE IF EXISTS nulls_t")
        conn.execute("CREATE TABLE nulls_t (id int PRIMARY KEY, s text, v vector(2))")
        conn.execute("INSERT INTO nulls_t VALUES (%s, %s, %s)", [1, None, None])
        got = conn.execute(
            "SELECT id, s IS NULL, v IS NULL FROM nulls_t WHERE id = %s OR s = %s", [1, None]
        ).fetchall()
        assert got == [(1, True, True)]
        assert conn.execute("SELECT current_setting(%s)", [None]).fetchone() == (None,)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_declared_parameter_types_type_the_result(server, binary):
    """A parameter the statement gives no type to takes the type the client
    declared in Parse, as in PostgreSQL: `SELECT %s` with a Python int is an
    integer column, not text."""
    import datetime
    import decimal

    values = [5, 3_000_000_000, 2.5, True, datetime.date(2024, 1, 2), "x", None]
    with server.connect() as conn:
        cur = conn.cursor(binary=binary)
        for prepare in (False, True):
            row = cur.execute(
                "SELECT " + ", ".join(["%s"] * len(values)), values, prepare=prepare
            ).fetchone()
            assert row == tuple(values)
            assert [type(v) for v in row] == [type(v) for v in values]
        # Bare parameters keep PostgreSQL's column name.
        assert [c.name for c in cur.description] == ["?column?"] * len(values)
        # A numeric comes back exactly (as text: the planner's decimals are
        # narrower than PostgreSQL's numeric).
        exact = "12345.678901234567"
        assert str(cur.execute("SELECT %s", [decimal.Decimal(exact)]).fetchone()[0]) == exact
        # psycopg declares int2 for a small int and int8 for a large one;
        # PostgreSQL describes the columns with those types.
        cur.execute("SELECT %s AS small, %s AS big", [7, 3_000_000_000])
        assert [c.type_code for c in cur.description] == [21, 20]
        assert cur.fetchone() == (7, 3_000_000_000)
        # Where the statement types the parameter, that type stays.
        assert cur.execute(f"SELECT id FROM {TABLE} WHERE id = %s", [2]).fetchone() == (2,)
        assert cur.execute("SELECT %s::text", [5]).fetchone() == ("5",)
        # A value the declared type cannot hold fails; it never turns NULL.
        import datetime as dt

        with pytest.raises(psycopg.Error):
            cur.execute("SELECT %s", [dt.datetime(2300, 1, 1)]).fetchone()


def test_set_returning_function_columns_are_named_like_postgres(server):
    with server.connect() as conn:
        for sql, names in [
            ("SELECT * FROM generate_series(1, 2)", ["generate_series"]),
            ("SELECT * FROM generate_series(1, 2) g", ["g"]),
            ("SELECT * FROM generate_series(1, 2) AS g(n)", ["n"]),
            ("SELECT * FROM unnest(ARRAY[1, 2])", ["unnest"]),
        ]:
            cur = conn.execute(sql)
            assert [c.name for c in cur.description] == names, sql
            assert [r[0] for r in cur.fetchall()] == [1, 2], sql


def test_set_is_transactional_and_set_local_ends_with_the_block(server):
    """As in PostgreSQL (and pgvector's docs: `SET LOCAL hnsw.ef_search`
    inside a transaction): SET LOCAL lasts until the block ends, ROLLBACK
    undoes every SET of the block, COMMIT keeps plain SETs."""
    with server.connect() as conn:
        show = lambda name: conn.execute(f"SHOW {name}").fetchone()[0]  # noqa: E731
        conn.execute("SET diskann.search_list = 50")
        conn.execute("BEGIN")
        conn.execute("SET LOCAL hnsw.ef_search = 100")
        conn.execute("SET LOCAL diskann.search_list = 70")
        assert (show("hnsw.ef_search"), show("diskann.search_list")) == ("100", "70")
        conn.execute("COMMIT")
        assert (show("hnsw.ef_search"), show("diskann.search_list")) == ("40", "50")
        conn.execute("BEGIN")
        conn.execute("SET diskann.search_list = 60")
        conn.execute("SET quiver.consistency = 'strong'")
        conn.execute("ROLLBACK")
        assert (show("diskann.search_list"), show("quiver.consistency")) == ("50", "session")
        conn.execute("BEGIN")
        conn.execute("SET diskann.search_list = 60")
        conn.execute("COMMIT")
        assert show("diskann.search_list") == "60"
        # Outside a block SET LOCAL warns and changes nothing.
        conn.execute("SET LOCAL diskann.search_list = 99")
        assert show("diskann.search_list") == "60"
        # ROLLBACK TO SAVEPOINT undoes the SETs made after the savepoint.
        conn.execute("BEGIN")
        conn.execute("SET diskann.search_list = 61")
        conn.execute("SAVEPOINT s")
        conn.execute("SET diskann.search_list = 62")
        conn.execute("SET LOCAL hnsw.ef_search = 77")
        conn.execute("ROLLBACK TO SAVEPOINT s")
        assert (show("diskann.search_list"), show("hnsw.ef_search")) == ("61", "40")
        # RESET ALL is session-level: a pending SET LOCAL no longer restores.
        conn.execute("SET LOCAL diskann.search_list = 63")
        conn.execute("RESET ALL")
        conn.execute("COMMIT")
        assert show("diskann.search_list") == "100"
        # A COMMIT that fails rolls back its SETs too.
        conn.execute("DROP TABLE IF EXISTS set_fail")
        conn.execute("CREATE TABLE set_fail (id int PRIMARY KEY)")
        conn.execute("BEGIN")
        conn.execute("SET diskann.search_list = 64")
        conn.execute("INSERT INTO set_fail VALUES (1)")
        with server.connect() as other:
            other.execute("INSERT INTO set_fail VALUES (1)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("COMMIT")
        assert show("diskann.search_list") == "100"
