"""Cancel requests (psycopg's conn.cancel(), libpq's PQcancel from another
socket) stop a running statement with 57014; the session stays usable, and
inside a transaction block the block fails, as in PostgreSQL."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg import errors

# About 25 s uncancelled in a debug build, so a broken cancel fails fast.
LONG_QUERY = "SELECT count(*) FROM generate_series(1, 1000000000)"


def cancel_soon(conn, delay=0.5):
    timer = threading.Timer(delay, conn.cancel)
    timer.start()
    return timer


def test_cancel_stops_a_running_query(module_quiver):
    with module_quiver.connect() as conn:
        timer = cancel_soon(conn)
        start = time.monotonic()
        with pytest.raises(errors.QueryCanceled):
            conn.execute(LONG_QUERY)
        timer.join()
        assert time.monotonic() - start < 10
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_cancel_inside_a_block_fails_the_block(module_quiver):
    with module_quiver.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS cancel_t")
        conn.execute("CREATE TABLE cancel_t (id int PRIMARY KEY)")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO cancel_t VALUES (1)")
        timer = cancel_soon(conn)
        with pytest.raises(errors.QueryCanceled):
            conn.execute(LONG_QUERY)
        timer.join()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT count(*) FROM cancel_t").fetchone() == (0,)
