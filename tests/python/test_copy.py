"""COPY ... FROM STDIN in text, CSV and binary format, through psycopg and
psql's \\copy, into the same durable write path as INSERT.

The binary case writes pgvector's binary `vector` layout by hand (u16
dimensions, u16 unused, big-endian float4s), exactly what pgvector-python's
binary COPY sends.
"""

from __future__ import annotations

import re
import struct
import subprocess

import numpy as np
import psycopg
import pytest
from conftest import wait_for_index_builds

TABLE = "copy_t"


@pytest.fixture
def server(module_quiver):
    with module_quiver.connect() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(
            f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, name text, score real, v vector(3))"
        )
    return module_quiver


def rows(conn):
    return conn.execute(f"SELECT id, name, score, v::text FROM {TABLE} ORDER BY id").fetchall()


def test_copy_text_and_csv(server):
    with server.connect() as conn:
        with conn.cursor().copy(f"COPY {TABLE} FROM STDIN") as copy:
            copy.write("1\tone\t1.5\t[1,2,3]\n2\t\\N\t\\N\t\\N\n")
        with conn.cursor().copy(f"COPY {TABLE} (id, v, name) FROM STDIN WITH (FORMAT csv, HEADER true)") as copy:
            copy.write('id,v,name\n3,"[4,5,6]","three, with comma"\n')
        assert rows(conn) == [
            (1, "one", 1.5, "[1,2,3]"),
            (2, None, None, None),
            (3, "three, with comma", None, "[4,5,6]"),
        ]


def binary_copy(records):
    out = bytearray(b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0))
    for id_, name, vec in records:
        out += struct.pack("!h", 3)
        out += struct.pack("!iq", 8, id_)
        if name is None:
            out += struct.pack("!i", -1)
        else:
            b = name.encode()
            out += struct.pack("!i", len(b)) + b
        payload = struct.pack("!HH", len(vec), 0) + struct.pack(f"!{len(vec)}f", *vec)
        out += struct.pack("!i", len(payload)) + payload
    out += struct.pack("!h", -1)
    return bytes(out)


def test_copy_binary_with_pgvector_layout(server):
    rng = np.random.default_rng(3)
    data = rng.standard_normal((500, 3)).astype(np.float32)
    records = [(i, f"n{i}" if i % 7 else None, data[i].tolist()) for i in range(500)]
    with server.connect() as conn:
        with conn.cursor().copy(f"COPY {TABLE} (id, name, v) FROM STDIN (FORMAT binary)") as copy:
            copy.write(binary_copy(records))
        assert conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == 500
        # The stored vectors are the float4 values sent, bit for bit.
        got = conn.execute(f"SELECT v::text FROM {TABLE} WHERE id = 42").fetchone()[0]
        assert np.array_equal(np.array(eval(got), dtype=np.float32), data[42])
        assert conn.execute(f"SELECT name FROM {TABLE} WHERE id = 7").fetchone()[0] is None
        # And kNN over them matches brute force.
        q = data[10] + 0.01
        ids = [r[0] for r in conn.execute(
            f"SELECT id FROM {TABLE} ORDER BY v <-> %s::vector LIMIT 5",
            ("[" + ",".join(str(float(x)) for x in q) + "]",),
        )]
        truth = np.argsort(((data - q) ** 2).sum(axis=1))[:5].tolist()
        assert ids == truth


def test_copy_is_atomic_and_errors_keep_the_session(server):
    with server.connect() as conn:
        with pytest.raises(psycopg.errors.UniqueViolation):
            with conn.cursor().copy(f"COPY {TABLE} (id, v) FROM STDIN") as copy:
                copy.write("1\t[1,1,1]\n2\t[2,2,2]\n1\t[3,3,3]\n")
        with pytest.raises(psycopg.errors.DataException) as bad_dims:
            with conn.cursor().copy(f"COPY {TABLE} (id, v) FROM STDIN") as copy:
                copy.write("5\t[1,2]\n")
        assert bad_dims.value.sqlstate == "22000"
        with pytest.raises(psycopg.Error) as bad_text:
            with conn.cursor().copy(f"COPY {TABLE} (id, v) FROM STDIN") as copy:
                copy.write("x\t[1,2,3]\n")
        assert bad_text.value.sqlstate == "22P02"
        # Nothing of the failed COPYs was written; the session still works.
        assert conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == 0
        assert conn.execute("SELECT 1").fetchone()[0] == 1


def test_copy_survives_a_crash(quiver_factory):
    server = quiver_factory()
    with server.connect() as conn:
        conn.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, v vector(3))")
        with conn.cursor().copy(f"COPY {TABLE} FROM STDIN") as copy:
            copy.write("".join(f"{i}\t[{i},0,1]\n" for i in range(2000)))
    server.crash_restart()
    with server.connect() as conn:
        assert conn.execute(f"SELECT count(*), sum(id) FROM {TABLE}").fetchone() == (2000, sum(range(2000)))


def test_a_bulk_copy_is_written_as_sealed_segments(quiver_factory):
    """A COPY of at least `direct_seal_rows` (10,000 by default) rows skips
    the WAL: each shard's part becomes a sealed segment when the COPY
    commits, and it survives kill -9 like any acknowledged write."""
    server = quiver_factory()
    n = 12_000
    rng = np.random.default_rng(5)
    data = rng.standard_normal((n, 3)).astype(np.float32)
    segments = (
        "SELECT state = 'growing', sum(rows) FROM quiver.segments "
        f"WHERE table_name = '{TABLE}' GROUP BY 1 ORDER BY 1"
    )
    with server.connect() as conn:
        conn.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, name text, v vector(3))")
        # A small write goes through the WAL and stays growing...
        conn.execute(f"INSERT INTO {TABLE} VALUES (-1, 'small', '[0,0,0]')")
        assert conn.execute(segments).fetchall() == [(True, 1)]
        with conn.cursor().copy(f"COPY {TABLE} (id, name, v) FROM STDIN (FORMAT binary)") as copy:
            copy.write(binary_copy([(i, f"n{i}", data[i].tolist()) for i in range(n)]))
        # ...until a bulk COPY seals its shards: the COPY's rows and the
        # older growing ones are all in sealed segments, without CHECKPOINT.
        assert conn.execute(segments).fetchall() == [(False, n + 1)]
        # A bulk COPY repeating one key fails whole and leaves nothing.
        with pytest.raises(psycopg.errors.UniqueViolation):
            with conn.cursor().copy(f"COPY {TABLE} (id, v) FROM STDIN") as copy:
                copy.write("".join(f"{i}\t[1,1,1]\n" for i in range(n, 2 * n)) + "7\t[1,1,1]\n")
        assert conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == n + 1
    server.crash_restart()
    with server.connect() as conn:
        assert conn.execute(f"SELECT count(*), sum(id) FROM {TABLE}").fetchone() == (n + 1, sum(range(n)) - 1)
        assert conn.execute(segments).fetchall() == [(False, n + 1)]
        got = conn.execute(f"SELECT name, v::text FROM {TABLE} WHERE id = 4242").fetchone()
        assert got[0] == "n4242"
        assert np.array_equal(np.array(eval(got[1]), dtype=np.float32), data[4242])
        q = data[10] + 0.01
        ids = [r[0] for r in conn.execute(
            f"SELECT id FROM {TABLE} WHERE id >= 0 ORDER BY v <-> %s::vector LIMIT 5",
            ("[" + ",".join(str(float(x)) for x in q) + "]",),
        )]
        assert ids == np.argsort(((data - q) ** 2).sum(axis=1))[:5].tolist()
        # The recovered key index still refuses the bulk-loaded keys.
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(f"INSERT INTO {TABLE} (id) VALUES (11999)")


def test_bulk_copies_merge_and_index_only_live_segments(quiver_factory):
    """Bulk COPYs leave small sealed segments; VACUUM merges them, and an
    index created right after is built for the merged segments only, not
    for the replaced ones still draining their queries."""
    server = quiver_factory()
    with server.connect() as conn:
        conn.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, v vector(8))")
        for part in range(3):
            with conn.cursor().copy(f"COPY {TABLE} (id, v) FROM STDIN") as copy:
                copy.write("".join(
                    f"{i}\t[{i % 13},{i % 7},1,2,3,4,5,{i % 5}]\n"
                    for i in range(part * 10_000, (part + 1) * 10_000)))
        sealed = f"SELECT count(*) FROM quiver.segments WHERE table_name = '{TABLE}' AND state <> 'growing'"
        assert conn.execute(sealed).fetchone()[0] == 6
        conn.execute(f"VACUUM {TABLE}")
        merged = {r[0] for r in conn.execute(
            f"SELECT segment_id FROM quiver.segments WHERE table_name = '{TABLE}'")}
        assert len(merged) == 2
        conn.execute(f"CREATE INDEX ON {TABLE} USING diskann (v vector_l2_ops)")
        wait_for_index_builds(conn)
        builds = conn.execute(
            f"SELECT state, count(*) FROM quiver.index_builds WHERE table_name = '{TABLE}' GROUP BY state"
        ).fetchall()
        assert builds == [("done", 2)]
        # No build ran for a replaced segment (they stay loaded a few
        # seconds for queries in flight, but are gone from the manifest).
        log = re.sub(r"\x1b\[[0-9;]*m", "", server.log_path.read_text(errors="replace"))
        built = {int(m) for m in re.findall(r"segment index built segment=(\d+)", log)}
        assert built == merged, log[-3000:]
        assert conn.execute(f"SELECT count(*), sum(id) FROM {TABLE}").fetchone() == (30_000, sum(range(30_000)))


def test_psql_backslash_copy(server, tmp_path):
    src = tmp_path / "items.csv"
    src.write_text('id,name,score,v\n10,ten,0.5,"[1,0,0]"\n11,eleven,,"[0,1,0]"\n')
    result = subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(server.port),
         "-U", "postgres", "postgres", "-c", f"\\copy {TABLE} from '{src}' csv header"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "COPY 2"
    with server.connect() as conn:
        assert rows(conn) == [(10, "ten", 0.5, "[1,0,0]"), (11, "eleven", None, "[0,1,0]")]


def test_copy_to_stdout_round_trips(server):
    with server.connect() as conn:
        conn.execute(
            f"INSERT INTO {TABLE} VALUES (1, 'a,b', 4, '[1,2,3]'), (2, NULL, 0.5, NULL), "
            "(3, 'tab\tx', NULL, '[1.5,0,-1]')"
        )
        with conn.cursor().copy(f"COPY {TABLE} TO STDOUT") as copy:
            text = b"".join(copy).decode()
        assert text == "1\ta,b\t4\t[1,2,3]\n2\t\\N\t0.5\t\\N\n3\ttab\\tx\t\\N\t[1.5,0,-1]\n"
        with conn.cursor().copy(f"COPY {TABLE} (id, v) TO STDOUT WITH (FORMAT csv, HEADER true)") as copy:
            csv_text = b"".join(copy).decode()
        assert csv_text == 'id,v\n1,"[1,2,3]"\n2,\n3,"[1.5,0,-1]"\n'
        # Binary out, binary in: an exact copy of the table.
        with conn.cursor().copy(f"COPY {TABLE} TO STDOUT (FORMAT binary)") as copy:
            payload = b"".join(copy)
        assert payload.startswith(b"PGCOPY\n\xff\r\n\x00")
        conn.execute("DROP TABLE IF EXISTS copy_t2")
        conn.execute("CREATE TABLE copy_t2 (id bigint PRIMARY KEY, name text, score real, v vector(3))")
        with conn.cursor().copy("COPY copy_t2 FROM STDIN (FORMAT binary)") as copy:
            copy.write(payload)
        assert conn.execute("SELECT id, name, score, v::text FROM copy_t2 ORDER BY id").fetchall() == rows(conn)
        # COPY (query) TO STDOUT
        with conn.cursor().copy(f"COPY (SELECT id FROM {TABLE} WHERE v IS NOT NULL ORDER BY id) TO STDOUT") as copy:
            assert b"".join(copy) == b"1\n3\n"


def test_relation_sizes_as_pgvector_docs_query_them(quiver_factory):
    """`pg_relation_size('index')`, `pg_total_relation_size('table')` and
    `pg_size_pretty`, as pgvector's docs use them to size an index."""
    server = quiver_factory()
    with server.connect() as conn:
        conn.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, v vector(8))")
        with conn.cursor().copy(f"COPY {TABLE} (id, v) FROM STDIN") as copy:
            copy.write("".join(f"{i}\t[{i % 13},{i % 7},1,2,3,4,5,{i % 5}]\n" for i in range(12_000)))
        conn.execute(f"CREATE INDEX copy_idx ON {TABLE} USING diskann (v vector_l2_ops)")
        wait_for_index_builds(conn)
        data = conn.execute(
            f"SELECT sum(bytes) FROM quiver.segments WHERE table_name = '{TABLE}'").fetchone()[0]
        index = conn.execute(
            f"SELECT sum(bytes) FROM quiver.index_builds WHERE index_name = 'copy_idx'").fetchone()[0]
        assert data > 0 and index > 0
        got = conn.execute(
            f"SELECT pg_relation_size('{TABLE}'), pg_table_size('{TABLE}'), pg_indexes_size('{TABLE}'), "
            f"pg_total_relation_size('{TABLE}'), pg_relation_size('copy_idx'::regclass)").fetchone()
        assert got == (data, data, index, data + index, index)
        # A table by ::regclass (an OID on the first pg_class lookup).
        assert conn.execute(f"SELECT pg_total_relation_size('{TABLE}'::regclass)").fetchone() == (data + index,)
        pretty = conn.execute("SELECT pg_size_pretty(pg_relation_size('copy_idx'))").fetchone()[0]
        assert pretty.endswith((" kB", " MB", " bytes")), pretty
        assert conn.execute("SELECT pg_size_pretty(20971520::bigint)").fetchone()[0] == "20 MB"
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT pg_relation_size('no_such_index')")
