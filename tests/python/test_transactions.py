"""Transactions over the wire with psycopg 3: BEGIN/COMMIT/ROLLBACK (and
the implicit transactions of a non-autocommit connection).

Guarantee under test (docs/sql.md, "Transactions"): a transaction's writes
are invisible to other sessions until COMMIT, visible to its own statements
(plain scans, WHERE, k-NN search, UPDATE/DELETE/upsert), applied at one
commit timestamp across tables and shards, gone after ROLLBACK, and a COMMIT
that was acknowledged survives kill -9 whole.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg import errors


@pytest.fixture(scope="module")
def server(module_quiver_factory):
    # Two shards, so one transaction's rows land on both.
    return module_quiver_factory(extra_args=["--shards", "2"])


def reset(conn, *tables):
    for t in tables:
        conn.execute(f"DROP TABLE IF EXISTS {t}")


def assert_block_failed_then_rolled_back(conn, table):
    """The open block failed: statements get 25P02 until ROLLBACK, which
    leaves `table` without the block's writes."""
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    with pytest.raises(errors.InFailedSqlTransaction):
        conn.execute("SELECT 1")
    conn.rollback()
    assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


def ids(conn, table):
    return [r[0] for r in conn.execute(f"SELECT id FROM {table} ORDER BY id").fetchall()]


def test_commit_is_invisible_until_commit_then_whole(server):
    with server.connect() as admin:
        reset(admin, "tx_a", "tx_b")
        admin.execute("CREATE TABLE tx_a (id bigint PRIMARY KEY, v vector(2), note text)")
        admin.execute("CREATE TABLE tx_b (id int PRIMARY KEY, n int)")
        admin.execute("INSERT INTO tx_a VALUES (1, '[0,0]', 'c1'), (2, '[1,1]', 'c2')")
    writer = server.connect(autocommit=False)
    other = server.connect()
    other.execute("SET quiver.consistency = 'strong'")
    try:
        writer.execute(
            "INSERT INTO tx_a SELECT i, '[5,5]', 'new' FROM generate_series(10, 29) AS t(i)"
        )
        writer.execute("UPDATE tx_a SET note = 'updated' WHERE id = 1")
        writer.execute("DELETE FROM tx_a WHERE id = 2")
        writer.execute("INSERT INTO tx_b VALUES (1, 10), (2, 20)")
        # The transaction sees its own writes ...
        assert ids(writer, "tx_a") == [1] + list(range(10, 30))
        assert writer.execute("SELECT note FROM tx_a WHERE id = 1").fetchone() == ("updated",)
        assert writer.execute("SELECT count(*) FROM tx_b").fetchone() == (2,)
        # ... nobody else does.
        assert ids(other, "tx_a") == [1, 2]
        assert other.execute("SELECT note FROM tx_a WHERE id = 1").fetchone() == ("c1",)
        assert other.execute("SELECT count(*) FROM tx_b").fetchone() == (0,)
        assert writer.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        writer.commit()
        assert writer.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert ids(other, "tx_a") == [1] + list(range(10, 30))
        assert other.execute("SELECT note FROM tx_a WHERE id = 1").fetchone() == ("updated",)
        assert other.execute("SELECT sum(n) FROM tx_b").fetchone() == (30,)
    finally:
        writer.close()
        other.close()


def test_rollback_discards_everything(server):
    with server.connect() as admin:
        reset(admin, "tx_r")
        admin.execute("CREATE TABLE tx_r (id bigserial PRIMARY KEY, v vector(2), n int)")
        admin.execute("INSERT INTO tx_r (v, n) VALUES ('[0,0]', 1), ('[1,1]', 2)")
        with admin.transaction() as tx:
            admin.execute("INSERT INTO tx_r (v, n) VALUES ('[2,2]', 3)")
            admin.execute("UPDATE tx_r SET n = 100")
            admin.execute("DELETE FROM tx_r WHERE n = 100 AND id = 1")
            assert admin.execute("SELECT sum(n) FROM tx_r").fetchone() == (200,)
            raise psycopg.Rollback(tx)
        assert admin.execute("SELECT id, n FROM tx_r ORDER BY id").fetchall() == [(1, 1), (2, 2)]
        # psql-style explicit statements on an autocommit connection.
        admin.execute("BEGIN")
        admin.execute("INSERT INTO tx_r (v, n) VALUES ('[3,3]', 4)")
        admin.execute("ROLLBACK")
        assert admin.execute("SELECT count(*) FROM tx_r").fetchone() == (2,)


def test_knn_inside_a_transaction_sees_its_own_rows(server):
    with server.connect() as admin:
        reset(admin, "tx_knn")
        admin.execute("CREATE TABLE tx_knn (id bigint PRIMARY KEY, v vector(2))")
        admin.execute(
            "INSERT INTO tx_knn VALUES " + ", ".join(f"({i}, '[{i},{i}]')" for i in range(1, 3001))
        )
        admin.execute("CHECKPOINT")  # most rows sealed, some growing below
        admin.execute("INSERT INTO tx_knn VALUES (5000, '[5000,5000]')")
        with admin.transaction():
            admin.execute("INSERT INTO tx_knn VALUES (-1, '[0.5,0.5]')")
            admin.execute("DELETE FROM tx_knn WHERE id IN (1, 2)")
            admin.execute("UPDATE tx_knn SET v = '[10000,10000]' WHERE id = 3")
            near = admin.execute(
                "SELECT id FROM tx_knn ORDER BY v <-> '[0,0]' LIMIT 3"
            ).fetchall()
            assert [r[0] for r in near] == [-1, 4, 5]
            far = admin.execute(
                "SELECT id FROM tx_knn ORDER BY v <-> '[10000,10000]' LIMIT 1"
            ).fetchall()
            assert far == [(3,)]
            filtered = admin.execute(
                "SELECT id FROM tx_knn WHERE id > 3 ORDER BY v <-> '[0,0]' LIMIT 2"
            ).fetchall()
            assert [r[0] for r in filtered] == [4, 5]
        near = admin.execute("SELECT id FROM tx_knn ORDER BY v <-> '[0,0]' LIMIT 2").fetchall()
        assert [r[0] for r in near] == [-1, 4]


def test_errors_abort_the_block_until_rollback(server):
    with server.connect() as conn:
        reset(conn, "tx_e")
        conn.execute("CREATE TABLE tx_e (id int PRIMARY KEY, n int)")
        conn.execute("INSERT INTO tx_e VALUES (1, 1)")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO tx_e VALUES (2, 2)")
        # A duplicate of a committed key is reported at the INSERT.
        with pytest.raises(errors.UniqueViolation):
            conn.execute("INSERT INTO tx_e VALUES (1, 9)")
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        # COMMIT of a failed block rolls back.
        cur = conn.execute("COMMIT")
        assert cur.statusmessage == "ROLLBACK"
        assert ids(conn, "tx_e") == [1]
        # A duplicate inside the transaction's own writes, too.
        conn.execute("BEGIN")
        conn.execute("INSERT INTO tx_e VALUES (3, 3)")
        with pytest.raises(errors.UniqueViolation):
            conn.execute("INSERT INTO tx_e VALUES (3, 4)")
        conn.execute("ROLLBACK")
        assert ids(conn, "tx_e") == [1]
        # Unsupported pieces fail clearly.
        with pytest.raises(errors.FeatureNotSupported):
            conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
        conn.execute("BEGIN")
        with pytest.raises(errors.ActiveSqlTransaction):
            conn.execute("VACUUM")
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_conflicting_commit_fails_whole(server):
    """Another session commits a key first: COMMIT fails with 23505 and
    none of the transaction's writes land."""
    with server.connect() as admin:
        reset(admin, "tx_c")
        admin.execute("CREATE TABLE tx_c (id int PRIMARY KEY, n int)")
    a = server.connect(autocommit=False)
    b = server.connect()
    try:
        a.execute("INSERT INTO tx_c VALUES (1, 1), (2, 2)")
        b.execute("INSERT INTO tx_c VALUES (2, 20)")
        with pytest.raises(errors.UniqueViolation):
            a.commit()
        # As in PostgreSQL, a failed COMMIT ends the block: the connection
        # is idle and goes on without a ROLLBACK.
        assert a.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert b.execute("SELECT id, n FROM tx_c ORDER BY id").fetchall() == [(2, 20)]
        a.execute("INSERT INTO tx_c VALUES (3, 3)")
        a.commit()
        assert b.execute("SELECT id FROM tx_c ORDER BY id").fetchall() == [(2,), (3,)]
        # The same through a simple-query COMMIT statement, and a ROLLBACK
        # afterwards only warns (there is no transaction in progress).
        a.execute("INSERT INTO tx_c VALUES (4, 4), (5, 5)")
        b.execute("INSERT INTO tx_c VALUES (5, 50)")
        with pytest.raises(errors.UniqueViolation):
            a.execute("COMMIT")
        assert a.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        a.rollback()
        assert b.execute("SELECT id, n FROM tx_c WHERE id >= 4 ORDER BY id").fetchall() == [(5, 50)]
    finally:
        a.close()
        b.close()


def test_upsert_and_copy_inside_a_transaction(server):
    with server.connect() as conn:
        reset(conn, "tx_u")
        conn.execute("CREATE TABLE tx_u (id int PRIMARY KEY, n int, v vector(2))")
        conn.execute("INSERT INTO tx_u VALUES (1, 1, '[1,1]')")
        with conn.transaction():
            conn.execute("INSERT INTO tx_u VALUES (1, 5, '[1,1]') ON CONFLICT (id) DO UPDATE SET n = tx_u.n + excluded.n")
            conn.execute("INSERT INTO tx_u VALUES (2, 2, '[2,2]') ON CONFLICT DO NOTHING")
            conn.execute("INSERT INTO tx_u VALUES (2, 9, '[9,9]') ON CONFLICT DO NOTHING")
            with conn.cursor().copy("COPY tx_u (id, n, v) FROM STDIN") as copy:
                for i in range(3, 6):
                    copy.write_row((i, i, f"[{i},{i}]"))
            assert conn.execute("SELECT id, n FROM tx_u ORDER BY id").fetchall() == [
                (1, 6), (2, 2), (3, 3), (4, 4), (5, 5)
            ]
        assert conn.execute("SELECT id, n FROM tx_u ORDER BY id").fetchall() == [
            (1, 6), (2, 2), (3, 3), (4, 4), (5, 5)
        ]


def test_acknowledged_commit_survives_kill9_whole(quiver_factory):
    """Concurrent transactions each move one unit between two tables on two
    shards; after SIGKILL every acknowledged commit is there in full and
    every table pair balances."""
    server = quiver_factory(extra_args=["--shards", "2"])
    with server.connect() as admin:
        admin.execute("CREATE TABLE tx_from (id int PRIMARY KEY, n int)")
        admin.execute("CREATE TABLE tx_to (id int PRIMARY KEY, n int)")
    acked: list[int] = []
    lock = threading.Lock()

    def worker(w: int):
        try:
            with server.connect(autocommit=False) as conn:
                for i in range(200):
                    key = w * 1000 + i
                    conn.execute("INSERT INTO tx_from VALUES (%s, -1)", (key,))
                    conn.execute("INSERT INTO tx_to VALUES (%s, 1)", (key,))
                    conn.commit()
                    with lock:
                        acked.append(key)
        except psycopg.Error:
            pass

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    while True:
        with lock:
            if len(acked) >= 150:
                break
        time.sleep(0.01)
    server.kill()
    for t in threads:
        t.join()
    server.start()
    with server.connect() as conn:
        from_ids = set(ids(conn, "tx_from"))
        to_ids = set(ids(conn, "tx_to"))
        assert from_ids == to_ids, "a transaction was applied to one table only"
        assert set(acked) <= from_ids


def test_savepoints(server):
    """psycopg's nested transaction() blocks are savepoints; a failed
    statement inside one is undone by ROLLBACK TO SAVEPOINT and the outer
    block goes on (this is how SQLAlchemy and psycopg probe types too)."""
    with server.connect() as conn:
        reset(conn, "tx_s")
        conn.execute("CREATE TABLE tx_s (id int PRIMARY KEY, n int)")
        conn.execute("INSERT INTO tx_s VALUES (1, 1)")
        with conn.transaction():
            conn.execute("INSERT INTO tx_s VALUES (2, 2)")
            with pytest.raises(errors.UniqueViolation):
                with conn.transaction():
                    conn.execute("INSERT INTO tx_s VALUES (3, 3)")
                    conn.execute("INSERT INTO tx_s VALUES (1, 9)")
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            with conn.transaction():
                conn.execute("UPDATE tx_s SET n = 20 WHERE id = 2")
            assert ids(conn, "tx_s") == [1, 2]
        assert conn.execute("SELECT id, n FROM tx_s ORDER BY id").fetchall() == [(1, 1), (2, 20)]
        # Explicit statements, names folded like identifiers.
        conn.execute("BEGIN")
        conn.execute("INSERT INTO tx_s VALUES (4, 4)")
        conn.execute("SAVEPOINT a")
        conn.execute("INSERT INTO tx_s VALUES (5, 5)")
        conn.execute("SAVEPOINT B")
        conn.execute("INSERT INTO tx_s VALUES (6, 6)")
        conn.execute("ROLLBACK TO SAVEPOINT a")
        assert ids(conn, "tx_s") == [1, 2, 4]
        conn.execute("INSERT INTO tx_s VALUES (7, 7)")
        conn.execute("RELEASE SAVEPOINT a")
        with pytest.raises(errors.InvalidSavepointSpecification):
            conn.execute("ROLLBACK TO SAVEPOINT b")
        conn.execute("ROLLBACK")
        with pytest.raises(errors.NoActiveSqlTransaction):
            conn.execute("SAVEPOINT c")
        assert ids(conn, "tx_s") == [1, 2]


def test_transaction_buffer_is_bounded(quiver_factory, tmp_path):
    config = tmp_path / "small.toml"
    config.write_text("[frontend]\ntransaction_buffer_mb = 1\n")
    server = quiver_factory(extra_args=["--config", str(config)])
    with server.connect() as conn:
        conn.execute("CREATE TABLE tx_big (id int PRIMARY KEY, v vector(256))")
        vec = "[" + ",".join(["0.5"] * 256) + "]"
        conn.execute("BEGIN")
        rows = ", ".join(f"({i}, '{vec}')" for i in range(500))  # ~0.5 MiB of vectors
        conn.execute(f"INSERT INTO tx_big VALUES {rows}")
        with pytest.raises(errors.ProgramLimitExceeded):
            more = ", ".join(f"({i}, '{vec}')" for i in range(500, 2000))
            conn.execute(f"INSERT INTO tx_big VALUES {more}")
        conn.execute("ROLLBACK")
        # Autocommit statements are not bounded by it.
        conn.execute(f"INSERT INTO tx_big VALUES {', '.join(f'({i}, {chr(39)}{vec}{chr(39)})' for i in range(2000))}")
        assert conn.execute("SELECT count(*) FROM tx_big").fetchone() == (2000,)


def test_a_commit_is_visible_to_every_other_session_at_once(server):
    # At the default consistency, as in PostgreSQL: once a write is
    # acknowledged, the next statement of any session sees it, although
    # the other shard's time tick has not moved yet.
    with server.connect() as writer, server.connect() as reader:
        reset(writer, "tx_seen")
        writer.execute("CREATE TABLE tx_seen (id bigint PRIMARY KEY, n int)")
        assert reader.execute("SHOW quiver.consistency").fetchone() == ("session",)
        for i in range(200):
            writer.execute("INSERT INTO tx_seen VALUES (%s, %s)", (i, i))
            assert reader.execute(
                "SELECT n FROM tx_seen WHERE id = %s", (i,)
            ).fetchone() == (i,), f"row {i} missing right after its commit"
        writer.execute("DELETE FROM tx_seen WHERE id = 7")
        assert reader.execute("SELECT count(*) FROM tx_seen").fetchone() == (199,)


def test_a_syntax_error_fails_the_open_block(server):
    """As in PostgreSQL: a statement that does not even parse aborts the
    block (25P02 until ROLLBACK), over the simple and the extended protocol."""
    with server.connect() as admin:
        reset(admin, "tx_syntax")
        admin.execute("CREATE TABLE tx_syntax (id int PRIMARY KEY)")
    for prepare in (False, True):
        conn = server.connect(autocommit=False)
        try:
            conn.execute("INSERT INTO tx_syntax VALUES (1)")
            with pytest.raises(errors.SyntaxError):
                conn.execute("SELEC 1", prepare=prepare)
            assert_block_failed_then_rolled_back(conn, "tx_syntax")
        finally:
            conn.close()


def test_a_parameter_that_cannot_be_bound_fails_the_open_block(server):
    """A Bind value that does not decode as its parameter's type is an error
    of the statement: it aborts the open block, as in PostgreSQL."""
    with server.connect() as admin:
        reset(admin, "tx_bind")
        admin.execute("CREATE TABLE tx_bind (id int PRIMARY KEY)")
    conn = server.connect(autocommit=False)
    try:
        conn.execute("INSERT INTO tx_bind VALUES (1)")
        with pytest.raises(psycopg.Error) as bad:
            conn.execute("SELECT id FROM tx_bind WHERE id = %s", ["abc"])
        assert bad.value.sqlstate == "22P02", bad.value
        assert_block_failed_then_rolled_back(conn, "tx_bind")
    finally:
        conn.close()
