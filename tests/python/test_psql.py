"""psql's meta-commands work against Quiver's pg_catalog emulation.

Each command runs through the real psql binary; the checks pin the lines a
user reads (relation names, column types, roles), not the whole layout.
"""

from __future__ import annotations

import subprocess

import pytest


@pytest.fixture(scope="module")
def server(module_quiver):
    with module_quiver.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS psql_items")
        conn.execute("CREATE TABLE psql_items (id bigint PRIMARY KEY, name text NOT NULL, embedding vector(3))")
    return module_quiver


def psql(server, command):
    result = subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(server.port),
         "-U", "postgres", "postgres", "-c", command],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"{command}: {result.stderr}"
    return result.stdout


def test_list_tables(server):
    out = psql(server, r"\dt")
    assert any(line.split("|")[1].strip() == "psql_items" for line in out.splitlines() if "|" in line)


def test_describe_table_shows_columns_and_nullability(server):
    out = psql(server, r"\d psql_items")
    lines = {line.split("|")[0].strip(): line for line in out.splitlines() if "|" in line}
    assert "bigint" in lines["id"] and "not null" in lines["id"]
    assert "text" in lines["name"] and "not null" in lines["name"]
    assert lines["embedding"].split("|")[1].strip() == "vector(3)"


def test_catalog_reports_vector_types_and_defaults(server):
    with server.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS psql_defaults")
        conn.execute(
            "CREATE TABLE psql_defaults (id bigserial PRIMARY KEY, v vector(384), n int DEFAULT 4)"
        )
        rows = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atthasdef"
            " FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
            " WHERE c.relname = 'psql_defaults' ORDER BY a.attnum"
        ).fetchall()
        assert rows == [("id", "bigint", True), ("v", "vector(384)", False), ("n", "integer", True)]
        defaults = conn.execute(
            "SELECT a.attname, pg_get_expr(d.adbin, d.adrelid)"
            " FROM pg_catalog.pg_attrdef d"
            " JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum"
            " JOIN pg_catalog.pg_class c ON c.oid = d.adrelid"
            " WHERE c.relname = 'psql_defaults' ORDER BY a.attnum"
        ).fetchall()
        assert defaults == [("id", "nextval('psql_defaults_id_seq'::regclass)"), ("n", "4")]
        assert conn.execute(
            "SELECT pg_get_serial_sequence('psql_defaults', 'id'), pg_get_serial_sequence('psql_defaults', 'n')"
        ).fetchone() == ("public.psql_defaults_id_seq", None)
        # pgvector installs its type in the extension's schema (public).
        assert conn.execute(
            "SELECT n.nspname FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n"
            " ON n.oid = t.typnamespace WHERE t.typname = 'vector'"
        ).fetchone() == ("public",)


def test_databases_schemas_roles(server):
    assert any(line.split("|")[0].strip() == "postgres" for line in psql(server, r"\l").splitlines() if "|" in line)
    assert any(line.split("|")[0].strip() == "public" for line in psql(server, r"\dn").splitlines() if "|" in line)
    roles = psql(server, r"\du")
    assert any(line.split("|")[0].strip() == "postgres" and "Superuser" in line for line in roles.splitlines())


def test_select_through_psql_prints_vectors(server):
    psql(server, "INSERT INTO psql_items VALUES (1, 'a', '[1,2,3]')")
    out = psql(server, "SELECT id, embedding, embedding <-> '[1,2,4]' AS d FROM psql_items")
    rows = [[c.strip() for c in line.split("|")] for line in out.splitlines() if "|" in line]
    assert rows == [["id", "embedding", "d"], ["1", "[1,2,3]", "1"]]


def test_indexes_are_in_the_catalog(server):
    with server.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS psql_indexed")
        conn.execute("CREATE TABLE psql_indexed (id int PRIMARY KEY, v vector(3))")
        conn.execute("CREATE INDEX psql_indexed_v ON psql_indexed USING hnsw (v vector_ip_ops)")
        rows = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'psql_indexed' ORDER BY indexname"
        ).fetchall()
        assert rows == [
            ("psql_indexed_pkey", "CREATE UNIQUE INDEX psql_indexed_pkey ON public.psql_indexed USING btree (id)"),
            ("psql_indexed_v", "CREATE INDEX psql_indexed_v ON public.psql_indexed USING hnsw (v vector_ip_ops)"),
        ]
        defs = conn.execute(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisprimary"
            " FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_catalog.pg_class t ON t.oid = i.indrelid"
            " WHERE t.relname = 'psql_indexed' ORDER BY c.relname"
        ).fetchall()
        assert [(r[0], r[2]) for r in defs] == [("psql_indexed_pkey", True), ("psql_indexed_v", False)]
        assert defs[1][1].endswith("USING hnsw (v vector_ip_ops)")
        conn.execute("DROP INDEX psql_indexed_v")
        assert conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'psql_indexed'"
        ).fetchone() == (1,)


def test_catalog_helper_functions(server):
    with server.connect() as conn:
        assert conn.execute(
            "SELECT json_build_object('a', 1, 'b', 'x', 'c', NULL)"
        ).fetchone() == ('{"a":1,"b":"x","c":null}',)
        assert conn.execute(
            "SELECT pg_type_is_visible(16385), pg_collation_is_visible(100)"
        ).fetchone() == (True, True)
