"""Errors carry PostgreSQL/pgvector SQLSTATEs and never break the session.

Every case runs on one connection: after the error the same connection must
still answer `SELECT 1`, and the server must still be up and accept new
connections. Cases run both with the simple query protocol (no parameters)
and, where it makes sense, with the extended protocol (bound parameters).
"""

from __future__ import annotations

import psycopg
import pytest

TABLE = "err_t"


@pytest.fixture(scope="module")
def server(module_quiver):
    with module_quiver.connect() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(
            f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, name text NOT NULL, v vector(3))"
        )
        conn.execute(f"INSERT INTO {TABLE} VALUES (1, 'one', '[1,2,3]')")
    return module_quiver


# (case id, sql, params, accepted SQLSTATEs, substring of the primary message or None)
CASES = [
    ("malformed_vector", "SELECT '[1,2'::vector", None, {"22P02"}, None),
    ("malformed_vector_no_brackets", "SELECT '1,2,3'::vector", None, {"22P02"}, None),
    (
        "wrong_dimensions",
        f"INSERT INTO {TABLE} VALUES (2, 'two', '[1,2]')",
        None,
        {"22000"},
        "expected 3 dimensions, not 2",
    ),
    (
        "different_dimensions_operator",
        "SELECT '[1,2]'::vector <-> '[1,2,3]'::vector",
        None,
        {"22000"},
        None,
    ),
    ("nan_in_vector", "SELECT '[NaN,1,2]'::vector", None, {"22000"}, "NaN not allowed in vector"),
    (
        "infinity_in_vector",
        "SELECT '[Infinity,1,2]'::vector",
        None,
        {"22000"},
        "infinite value not allowed in vector",
    ),
    (
        "nan_in_insert",
        f"INSERT INTO {TABLE} VALUES (3, 'three', '[1,NaN,3]')",
        None,
        {"22000"},
        "NaN not allowed in vector",
    ),
    ("unknown_table", "SELECT * FROM err_no_such_table", None, {"42P01"}, None),
    ("unknown_table_insert", "INSERT INTO err_no_such_table VALUES (1)", None, {"42P01"}, None),
    ("unknown_column", f"SELECT no_such_column FROM {TABLE}", None, {"42703"}, None),
    (
        "unknown_column_insert",
        f"INSERT INTO {TABLE} (id, name, nope) VALUES (9, 'x', 1)",
        None,
        {"42703"},
        None,
    ),
    ("syntax_error", "SELEC 1", None, {"42601"}, None),
    ("syntax_error_2", f"SELECT * FROM {TABLE} WHERE", None, {"42601"}, None),
    ("duplicate_pk", f"INSERT INTO {TABLE} VALUES (1, 'again', '[3,2,1]')", None, {"23505"}, None),
    (
        "not_null_violation",
        f"INSERT INTO {TABLE} (id, name, v) VALUES (4, NULL, '[1,1,1]')",
        None,
        {"23502"},
        None,
    ),
    (
        "not_null_pk",
        f"INSERT INTO {TABLE} (id, name, v) VALUES (NULL, 'x', '[1,1,1]')",
        None,
        {"23502"},
        None,
    ),
    (
        "wrong_type",
        f"INSERT INTO {TABLE} (id, name, v) VALUES ('abc', 'x', '[1,1,1]')",
        None,
        {"42804", "22P02"},
        None,
    ),
    # Extended protocol (bound parameters).
    ("param_malformed_vector", "SELECT %s::vector", ["[1,2"], {"22P02"}, None),
    (
        "param_wrong_dimensions",
        f"INSERT INTO {TABLE} (id, name, v) VALUES (%s, %s, %s::vector)",
        [5, "five", "[1,2]"],
        {"22000"},
        "expected 3 dimensions, not 2",
    ),
    (
        "param_duplicate_pk",
        f"INSERT INTO {TABLE} (id, name, v) VALUES (%s, %s, %s::vector)",
        [1, "dup", "[1,1,1]"],
        {"23505"},
        None,
    ),
    ("param_unknown_table", "SELECT * FROM err_no_such_table WHERE id = %s", [1], {"42P01"}, None),
]


def assert_healthy(server, conn):
    assert conn.execute("SELECT 1").fetchone() == (1,)
    assert server.is_alive(), "server process died"
    with server.connect() as other:
        assert other.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize(
    "sql,params,states,message",
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_error_sqlstate(server, sql, params, states, message):
    with server.connect() as conn:
        with pytest.raises(psycopg.Error) as ei:
            conn.execute(sql, params)
        err = ei.value
        assert err.sqlstate in states, (
            f"expected SQLSTATE {sorted(states)}, got {err.sqlstate}: {err}"
        )
        if message is not None:
            assert message in (err.diag.message_primary or str(err)), str(err)
        assert_healthy(server, conn)


def test_errors_do_not_change_data(server):
    """After all the failing statements the table holds exactly its one row."""
    with server.connect() as conn:
        rows = conn.execute(f"SELECT id, name, v::text FROM {TABLE} ORDER BY id").fetchall()
        assert rows == [(1, "one", "[1,2,3]")]


def test_many_errors_in_a_row_same_connection(server):
    with server.connect() as conn:
        for i in range(50):
            with pytest.raises(psycopg.Error) as ei:
                conn.execute("SELECT '[1,2'::vector" if i % 2 else "SELECT * FROM err_nope")
            assert ei.value.sqlstate in ("22P02", "42P01")
        assert_healthy(server, conn)


def test_error_inside_multi_row_insert_is_atomic(server):
    with server.connect() as conn:
        with pytest.raises(psycopg.Error) as ei:
            conn.execute(
                f"INSERT INTO {TABLE} VALUES (10, 'ten', '[1,1,1]'), (11, 'eleven', '[1,1]')"
            )
        assert ei.value.sqlstate == "22000"
        assert conn.execute(f"SELECT count(*) FROM {TABLE} WHERE id IN (10, 11)").fetchone() == (
            0,
        )
        assert_healthy(server, conn)
