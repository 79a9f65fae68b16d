"""Crash durability: acknowledged writes survive SIGKILL.

8 writer threads, each with its own autocommit connection, insert rows with
unique ids (and delete some of their own earlier rows) while the server is
SIGKILLed at seeded random moments, over 6 crash/restart cycles on the same
data directory (server started with --seal-rows 500 so sealing to Parquet
happens while writing).

After every restart:
  * every acknowledged insert that was not deleted is present, with its values;
  * no acknowledged delete is undone;
  * no row appears that was never written;
  * statements that were in flight at the crash may have gone either way, but
    their outcome must then stay stable across later restarts.
At the end, Parquet files exist under DATA_DIR/objects and the rows loaded
before the first crash are all readable.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import psycopg
import pytest

SEED = 7_331
N_WRITERS = 8
N_CYCLES = 6
SEAL_ROWS = 500
INITIAL_ROWS = 10_000
DIM = 8
TABLE = "crash_t"
# ids: writer * WRITER_SPAN + cycle * CYCLE_SPAN + seq, initial rows below WRITER_SPAN.
WRITER_SPAN = 1_000_000_000
CYCLE_SPAN = 1_000_000
MIN_RUN_S, MAX_RUN_S = 1.0, 4.0
THREAD_JOIN_TIMEOUT_S = 60.0
# Bound on the statements one writer sends per cycle; after that it idles
# until the crash.
MAX_STMTS_PER_CYCLE = 300


def emb_for(row_id: int) -> list[float]:
    """Deterministic small-integer vector for an id (prints exactly)."""
    return [float((row_id // (7**k)) % 97) for k in range(DIM)]


def emb_literal(row_id: int) -> str:
    return "[" + ",".join(str(int(x)) for x in emb_for(row_id)) + "]"


def parse_vec(text: str) -> list[float]:
    return [float(x) for x in text.strip().strip("[]").split(",")]


@dataclass
class Ledger:
    """What the clients know about the table's contents."""

    acked_inserts: set[int] = field(default_factory=set)
    acked_deletes: set[int] = field(default_factory=set)
    # In flight at a crash: may or may not have been applied. Kept per
    # statement, since a statement must apply atomically (all rows or none).
    uncertain_insert_stmts: list[tuple[int, ...]] = field(default_factory=list)
    uncertain_delete_stmts: list[tuple[int, ...]] = field(default_factory=list)
    # Resolved after a restart as "not applied": must stay absent forever.
    lost_inserts: set[int] = field(default_factory=set)
    anomalies: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def uncertain_inserts(self) -> set[int]:
        return {i for stmt in self.uncertain_insert_stmts for i in stmt}

    @property
    def uncertain_deletes(self) -> set[int]:
        return {i for stmt in self.uncertain_delete_stmts for i in stmt}

    def must_be_present(self) -> set[int]:
        return self.acked_inserts - self.acked_deletes - self.uncertain_deletes

    def must_be_absent(self) -> set[int]:
        return self.acked_deletes | self.lost_inserts

    def may_exist(self) -> set[int]:
        return self.acked_inserts | self.uncertain_inserts

    def resolve(self, present: set[int], label: str) -> None:
        """After verification, fold in the outcome of in-flight statements.

        Returns nothing; records an anomaly if an in-flight statement was
        applied only partially."""
        for stmt in self.uncertain_insert_stmts:
            applied = [i for i in stmt if i in present]
            if applied and len(applied) != len(stmt):
                self.anomalies.append(
                    f"{label}: INSERT of {len(stmt)} rows applied partially "
                    f"({len(applied)} rows present)"
                )
            for i in stmt:
                (self.acked_inserts if i in present else self.lost_inserts).add(i)
        self.uncertain_insert_stmts.clear()
        for stmt in self.uncertain_delete_stmts:
            gone = [i for i in stmt if i not in present]
            if gone and len(gone) != len(stmt):
                self.anomalies.append(
                    f"{label}: DELETE of {len(stmt)} rows applied partially "
                    f"({len(gone)} rows gone)"
                )
            self.acked_deletes.update(gone)
        self.uncertain_delete_stmts.clear()


def writer(
    server, ledger: Ledger, w: int, cycle: int, mine: list[int], stop: threading.Event, seed: int
):
    """Writes until `stop` is set or the connection fails (server killed).

    `mine` are this writer's rows known to be present (it only deletes those)."""
    rng = random.Random(seed)
    seq = 0
    try:
        conn = server.connect(connect_timeout=10)
    except psycopg.Error:
        return  # the server may already be gone
    try:
        for _ in range(MAX_STMTS_PER_CYCLE):
            if stop.is_set():
                break
            if mine and rng.random() < 0.25:
                # Delete 1-3 of our own acknowledged rows (sealed or growing).
                victims = rng.sample(mine, k=min(len(mine), rng.randint(1, 3)))
                stmt = tuple(victims)
                with ledger.lock:
                    ledger.uncertain_delete_stmts.append(stmt)
                try:
                    cur = conn.execute(
                        f"DELETE FROM {TABLE} WHERE id IN ({','.join(map(str, victims))})"
                    )
                except psycopg.Error:
                    return  # outcome unknown: stays uncertain
                with ledger.lock:
                    ledger.uncertain_delete_stmts.remove(stmt)
                    ledger.acked_deletes.update(victims)
                    if cur.rowcount != len(victims):
                        ledger.anomalies.append(
                            f"writer {w}: DELETE of acked rows {victims} affected {cur.rowcount}"
                        )
                for v in victims:
                    mine.remove(v)
            else:
                n = rng.randint(1, 20)
                ids = [w * WRITER_SPAN + cycle * CYCLE_SPAN + seq + k for k in range(n)]
                seq += n
                values = ",".join(
                    f"({i}, {w}, {cycle}, '{emb_literal(i)}')" for i in ids
                )
                stmt = tuple(ids)
                with ledger.lock:
                    ledger.uncertain_insert_stmts.append(stmt)
                try:
                    cur = conn.execute(
                        f"INSERT INTO {TABLE} (id, writer, cycle, emb) VALUES {values}"
                    )
                except psycopg.Error:
                    return  # outcome unknown: stays uncertain
                with ledger.lock:
                    ledger.uncertain_insert_stmts.remove(stmt)
                    ledger.acked_inserts.update(ids)
                    if cur.rowcount != n:
                        ledger.anomalies.append(
                            f"writer {w}: INSERT of {n} rows reported {cur.rowcount}"
                        )
                mine.extend(ids)
        stop.wait()
    finally:
        try:
            conn.close()
        except Exception:
            pass


def fetch_table(server) -> dict[int, tuple[int, int, str]]:
    with server.connect() as conn:
        rows = conn.execute(f"SELECT id, writer, cycle, emb::text FROM {TABLE}").fetchall()
    out: dict[int, tuple[int, int, str]] = {}
    for rid, wr, cy, emb in rows:
        assert int(rid) not in out, f"duplicate primary key {rid} returned"
        out[int(rid)] = (int(wr), int(cy), str(emb))
    return out


def verify(server, ledger: Ledger, initial_ids: set[int], label: str) -> set[int]:
    rows = fetch_table(server)
    present = set(rows)
    missing = ledger.must_be_present() - present
    resurrected = ledger.must_be_absent() & present
    phantoms = present - ledger.may_exist() - initial_ids
    assert not missing, (
        f"{label}: {len(missing)} acknowledged rows lost, e.g. {sorted(missing)[:10]}"
    )
    assert not resurrected, (
        f"{label}: {len(resurrected)} deleted/lost rows came back, e.g. {sorted(resurrected)[:10]}"
    )
    assert not phantoms, f"{label}: unknown rows appeared, e.g. {sorted(phantoms)[:10]}"
    missing_initial = initial_ids - present
    assert not missing_initial, (
        f"{label}: {len(missing_initial)} pre-crash rows lost, e.g. {sorted(missing_initial)[:10]}"
    )
    # Values are intact.
    for rid, (wr, cy, emb) in rows.items():
        if rid >= WRITER_SPAN:
            assert wr == rid // WRITER_SPAN and cy == (rid % WRITER_SPAN) // CYCLE_SPAN, (
                f"{label}: row {rid} has writer={wr} cycle={cy}"
            )
        else:
            assert wr == -1 and cy == -1, f"{label}: initial row {rid} has writer={wr} cycle={cy}"
        assert parse_vec(emb) == emb_for(rid), f"{label}: row {rid} has emb {emb}"
    assert not ledger.anomalies, f"{label}: {ledger.anomalies[:5]}"
    return present


def wait_for_parquet(server, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = server.parquet_files()
        if files:
            return files
        time.sleep(0.5)
    return []


def test_sigkill_durability(quiver_factory):
    rng = random.Random(SEED)
    server = quiver_factory(["--seal-rows", str(SEAL_ROWS)])
    ledger = Ledger()

    with server.connect() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(
            f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, writer int, cycle int, "
            f"emb vector({DIM}))"
        )
        # Rows from before any crash: 20x the seal threshold, so automatic
        # sealing must kick in (no explicit CHECKPOINT here).
        initial_ids = set(range(1, INITIAL_ROWS + 1))
        batch = 1000
        for start in range(1, INITIAL_ROWS + 1, batch):
            ids = range(start, min(start + batch, INITIAL_ROWS + 1))
            values = ",".join(f"({i}, -1, -1, '{emb_literal(i)}')" for i in ids)
            cur = conn.execute(f"INSERT INTO {TABLE} (id, writer, cycle, emb) VALUES {values}")
            assert cur.rowcount == len(ids)

    sealed = wait_for_parquet(server)
    assert sealed, (
        f"no .parquet files under {server.objects_dir} after inserting {INITIAL_ROWS} rows "
        f"with --seal-rows {SEAL_ROWS} (automatic sealing did not happen)"
    )

    verify(server, ledger, initial_ids, "before crashes")

    for cycle in range(1, N_CYCLES + 1):
        stop = threading.Event()
        present_now = ledger.must_be_present()
        owned = {
            w: sorted(i for i in present_now if i // WRITER_SPAN == w)
            for w in range(1, N_WRITERS + 1)
        }
        threads = [
            threading.Thread(
                target=writer,
                args=(server, ledger, w, cycle, owned[w], stop, SEED * 1000 + cycle * 100 + w),
                name=f"writer-{cycle}-{w}",
                daemon=True,
            )
            for w in range(1, N_WRITERS + 1)
        ]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(MIN_RUN_S, MAX_RUN_S))

        server.kill()  # SIGKILL while the writers are busy
        stop.set()
        for t in threads:
            t.join(THREAD_JOIN_TIMEOUT_S)
            assert not t.is_alive(), f"{t.name} hung after the server was killed"

        server.start()
        label = f"after crash #{cycle}"
        present = verify(server, ledger, initial_ids, label)
        print(
            f"{label}: {len(present)} rows, acked inserts {len(ledger.acked_inserts)}, "
            f"acked deletes {len(ledger.acked_deletes)}, in-flight inserts "
            f"{len(ledger.uncertain_inserts)}, in-flight deletes {len(ledger.uncertain_deletes)}"
        )
        with ledger.lock:
            ledger.resolve(present, label)
        assert not ledger.anomalies, ledger.anomalies[:5]
        assert any(i >= WRITER_SPAN for i in ledger.acked_inserts), (
            "writers never got an insert acknowledged"
        )

    # A final clean check, including a second restart without new writes:
    # resolved outcomes must stay stable.
    server.crash_restart()
    verify(server, ledger, initial_ids, "after final restart")

    files = server.parquet_files()
    assert files, f"no .parquet files under {server.objects_dir} at the end"

    with server.connect() as conn:
        n_initial = conn.execute(
            f"SELECT count(*) FROM {TABLE} WHERE id <= {INITIAL_ROWS}"
        ).fetchone()[0]
        assert n_initial == INITIAL_ROWS
        # Pre-crash rows are readable through kNN too.
        row = conn.execute(
            f"SELECT id FROM {TABLE} WHERE id <= {INITIAL_ROWS} "
            f"ORDER BY emb <-> '{emb_literal(1234)}' LIMIT 1"
        ).fetchone()
        assert row is not None and parse_vec(emb_literal(row[0])) == emb_for(1234)
