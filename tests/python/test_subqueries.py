"""Scalar subqueries with PostgreSQL's semantics over the wire: correlated
ones yield the matching row's value (NULL without one, error 21000 with more
than one), also inside CASE and behind outer-only guards; and SQLAlchemy's
table reflection, which is built from exactly such subqueries plus
int2vector expansions and LIKE ... ESCAPE '/'."""

from __future__ import annotations

import psycopg
import pytest
from pgvector.sqlalchemy import Vector
from sqlalchemy import MetaData, Table, create_engine, inspect


@pytest.fixture(scope="module")
def server(module_quiver):
    with module_quiver.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS sq_outer")
        conn.execute("DROP TABLE IF EXISTS sq_inner")
        conn.execute("CREATE TABLE sq_outer (a int PRIMARY KEY, f bool)")
        conn.execute("CREATE TABLE sq_inner (b int PRIMARY KEY, c text, g int)")
        conn.execute("INSERT INTO sq_outer VALUES (1, true), (2, false), (3, true), (4, NULL)")
        conn.execute("INSERT INTO sq_inner VALUES (1, 'one', 7), (2, 'two', 7), (4, 'four', 8)")
    return module_quiver


def rows(server, sql):
    with server.connect() as conn:
        return conn.execute(sql).fetchall()


def test_correlated_subquery_in_the_select_list(server):
    got = rows(
        server,
        "SELECT a, (SELECT c FROM sq_inner WHERE sq_inner.b = sq_outer.a) AS c FROM sq_outer ORDER BY a",
    )
    assert got == [(1, "one"), (2, "two"), (3, None), (4, "four")]
    aliased = rows(
        server,
        "SELECT o.a, (SELECT i.c || '!' FROM sq_inner i WHERE i.b = o.a) FROM sq_outer o ORDER BY o.a",
    )
    assert aliased == [(1, "one!"), (2, "two!"), (3, None), (4, "four!")]


def test_correlated_subquery_inside_case_and_behind_an_outer_guard(server):
    in_case = rows(
        server,
        "SELECT a, CASE WHEN f THEN (SELECT c FROM sq_inner WHERE sq_inner.b = sq_outer.a) ELSE 'no' END"
        " FROM sq_outer ORDER BY a",
    )
    assert in_case == [(1, "one"), (2, "no"), (3, None), (4, "no")]
    guarded = rows(
        server,
        "SELECT a, (SELECT c FROM sq_inner WHERE sq_outer.f AND sq_inner.b = sq_outer.a AND sq_inner.g = 7)"
        " FROM sq_outer ORDER BY a",
    )
    assert guarded == [(1, "one"), (2, None), (3, None), (4, None)]
    counted = rows(
        server,
        "SELECT a, (SELECT count(*) FROM sq_inner WHERE sq_inner.g = 7 AND sq_inner.b = sq_outer.a)"
        " FROM sq_outer ORDER BY a",
    )
    assert counted == [(1, 1), (2, 1), (3, 0), (4, 0)]


def test_uncorrelated_subqueries(server):
    assert rows(server, "SELECT (SELECT c FROM sq_inner WHERE b = 2)") == [("two",)]
    assert rows(server, "SELECT (SELECT c FROM sq_inner WHERE b = 99)") == [(None,)]
    assert rows(
        server, "SELECT a FROM sq_outer WHERE a = (SELECT b FROM sq_inner WHERE c = 'four')"
    ) == [(4,)]


def test_more_than_one_row_is_an_error_and_the_session_goes_on(server):
    with server.connect() as conn:
        with pytest.raises(psycopg.errors.CardinalityViolation) as err:
            conn.execute("SELECT a, (SELECT c FROM sq_inner) FROM sq_outer").fetchall()
        assert "more than one row returned by a subquery" in str(err.value)
        with pytest.raises(psycopg.errors.CardinalityViolation):
            conn.execute(
                "SELECT a, (SELECT c FROM sq_inner WHERE sq_inner.g = 7 AND sq_outer.a > 0) FROM sq_outer"
            ).fetchall()
        assert conn.execute("SELECT count(*) FROM sq_outer").fetchone() == (4,)


def test_only_outer_rows_that_meet_several_rows_fail(server):
    # sq_inner holds two rows with g = 7, one with g = 8: outer rows that
    # never look up 7 are fine, as in PostgreSQL.
    assert rows(
        server,
        "SELECT v.x, (SELECT c FROM sq_inner WHERE sq_inner.g = v.x) FROM (VALUES (8), (9)) AS v(x) ORDER BY 1",
    ) == [(8, "four"), (9, None)]
    assert rows(
        server,
        "SELECT v.x, CASE WHEN v.x <> 7 THEN (SELECT c FROM sq_inner WHERE sq_inner.g = v.x) END"
        " FROM (VALUES (7), (8)) AS v(x) ORDER BY 1",
    ) == [(7, None), (8, "four")]
    with server.connect() as conn:
        with pytest.raises(psycopg.errors.CardinalityViolation):
            conn.execute(
                "SELECT v.x, (SELECT c FROM sq_inner WHERE sq_inner.g = v.x) FROM (VALUES (7), (8)) AS v(x)"
            ).fetchall()


def test_an_unsupported_correlation_fails_instead_of_returning_nulls(server):
    with server.connect() as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute(
                "SELECT a, (SELECT c FROM sq_inner WHERE sq_inner.b < sq_outer.a) FROM sq_outer"
            ).fetchall()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_sqlalchemy_reflects_columns(server):
    assert Vector  # importing pgvector.sqlalchemy registers the `vector` type
    with server.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS sq_reflected")
        conn.execute(
            "CREATE TABLE sq_reflected (id bigserial PRIMARY KEY, name text NOT NULL DEFAULT 'x',"
            " embedding vector(3))"
        )
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/postgres")
    try:
        columns = {c["name"]: c for c in inspect(engine).get_columns("sq_reflected")}
    finally:
        engine.dispose()
    assert list(columns) == ["id", "name", "embedding"]
    assert columns["id"]["default"] == "nextval('sq_reflected_id_seq'::regclass)"
    assert columns["id"]["autoincrement"] is True
    assert not columns["id"]["nullable"]
    assert columns["name"]["default"] == "'x'"
    assert not columns["name"]["nullable"]
    assert isinstance(columns["embedding"]["type"], Vector)
    assert columns["embedding"]["type"].dim == 3
    assert columns["embedding"]["nullable"]


def test_sqlalchemy_reflects_keys_indexes_and_whole_tables(server):
    with server.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS sq_docs")
        conn.execute(
            "CREATE TABLE sq_docs (tenant int, id bigint, body text, embedding vector(4),"
            " PRIMARY KEY (tenant, id))"
        )
        conn.execute(
            "CREATE INDEX sq_docs_embedding ON sq_docs USING diskann (embedding vector_cosine_ops)"
        )
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/postgres")
    try:
        inspector = inspect(engine)
        pk = inspector.get_pk_constraint("sq_docs")
        assert pk["name"] == "sq_docs_pkey"
        assert pk["constrained_columns"] == ["tenant", "id"]
        indexes = inspector.get_indexes("sq_docs")
        assert [(i["name"], i["column_names"], i["unique"]) for i in indexes] == [
            ("sq_docs_embedding", ["embedding"], False)
        ]
        assert indexes[0]["dialect_options"]["postgresql_using"] == "diskann"
        assert inspector.get_unique_constraints("sq_docs") == []
        assert inspector.get_foreign_keys("sq_docs") == []
        assert "public" in inspector.get_schema_names()
        # Quiver's system views live in schema `quiver`, off the search path.
        assert inspector.get_view_names() == []
        assert sorted(inspector.get_view_names(schema="quiver")) == ["index_builds", "segments"]
        table = Table("sq_docs", MetaData(), autoload_with=engine)
        assert [c.name for c in table.primary_key.columns] == ["tenant", "id"]
        assert isinstance(table.c.embedding.type, Vector)
        assert [i.name for i in table.indexes] == ["sq_docs_embedding"]
    finally:
        engine.dispose()


def test_like_with_another_escape_character(server):
    assert rows(server, "SELECT 'a_c' LIKE 'a/_c' ESCAPE '/', 'abc' LIKE 'a/_c' ESCAPE '/'") == [
        (True, False)
    ]
    assert rows(server, "SELECT 'a%' NOT LIKE 'a!%' ESCAPE '!', 'a\\b' LIKE 'a\\b' ESCAPE ''") == [
        (False, True)
    ]
    with server.connect() as conn:
        with pytest.raises(psycopg.errors.InvalidEscapeSequence):
            conn.execute("SELECT 'a' LIKE 'a!' ESCAPE '!'").fetchall()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_current_setting_of_a_bound_parameter(server):
    with server.connect() as conn:
        conn.execute("SET hnsw.ef_search = 33")
        got = conn.execute(
            "SELECT current_setting(%s::varchar), current_setting(%s, true), current_setting(%s)",
            ["default_table_access_method", "no.such_setting", "hnsw.ef_search"],
        ).fetchone()
        assert got == ("heap", None, "33")
        with pytest.raises(psycopg.errors.UndefinedObject):
            conn.execute("SELECT current_setting(%s)", ["no.such_setting"]).fetchone()
        assert conn.execute("SELECT 1").fetchone() == (1,)
