"""The WAL on a real Kafka-protocol broker (tansu, installed by
scripts/ci-deps.sh into ~/.cache/quiver-services) with the metadata on a
real etcd and segments in a real S3-compatible bucket: Quiver with no local
source of truth. Acknowledged writes survive kill -9 under an 8-writer load
(no loss, no duplicates, statements larger than one Kafka message); while
the broker is down writes fail with a clear error, and they succeed again
once it is back, with nothing acknowledged lost."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from services import Etcd, KafkaBroker, S3Server

SHARDS = 2


@pytest.fixture
def services(tmp_path):
    etcd = Etcd(tmp_path).start()
    broker = KafkaBroker(tmp_path).start()
    s3 = S3Server(tmp_path).start()
    config = tmp_path / "cluster-backends.toml"
    config.write_text(
        f"""
[coordinator]
shards = {SHARDS}

[streaming]
# The 10 MB COPY below must go through the WAL (chunked envelopes), not
# straight to sealed segments.
direct_seal_rows = 0

[storage.wal]
kind = "kafka"
brokers = "{broker.bootstrap}"
topic = "quiver-test-wal"
delivery_timeout_ms = 3000
delete_sealed_records = false

[storage.meta]
kind = "etcd"
endpoints = ["{etcd.endpoint}"]
root = "/kafka-test"
max_txn_ops = 1024
"""
        + s3.config_toml()
    )
    yield broker, str(config)
    s3.stop()
    broker.kill()
    etcd.kill()


def vec(i: int, dim: int = 4) -> str:
    return "[" + ",".join(str((i * 31 + d) % 97) for d in range(dim)) + "]"


class Writers:
    """N autocommit writers inserting distinct ids until stopped or failing;
    `acked` holds every id whose INSERT returned success."""

    def __init__(self, server, n: int, table: str, stop_on_error: bool = True):
        self.acked: set[int] = set()
        self.errors: list[psycopg.Error] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self.run, args=(server, w, n, table, stop_on_error), daemon=True)
            for w in range(n)
        ]

    def run(self, server, w, n, table, stop_on_error):
        i = w
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = server.connect(connect_timeout=3)
                conn.execute(f"INSERT INTO {table} (id, v) VALUES (%s, %s)", (i, vec(i)))
                with self.lock:
                    self.acked.add(i)
                i += n
            except psycopg.Error as e:
                with self.lock:
                    self.errors.append(e)
                if stop_on_error:
                    return
                if conn is not None and conn.closed:
                    conn = None
                time.sleep(0.2)
        if conn is not None:
            conn.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def test_acknowledged_writes_survive_kill_9_with_kafka_wal(services, quiver_factory):
    broker, config = services
    server = quiver_factory(extra_args=["--config", config])
    with server.connect() as conn:
        conn.execute("CREATE TABLE k (id bigint PRIMARY KEY, v vector(4))")
        # One statement far larger than a Kafka message (1 MB): 40,000 rows
        # of 64 dims is ~10 MB of WAL, chunked and reassembled on replay.
        conn.execute("CREATE TABLE big (id bigint PRIMARY KEY, v vector(64))")
        with conn.cursor().copy("COPY big (id, v) FROM STDIN") as copy:
            for i in range(40_000):
                copy.write_row((i, vec(i, 64)))
    with Writers(server, 8, "k") as writers:
        deadline = time.monotonic() + 30
        while len(writers.acked) < 300:
            assert time.monotonic() < deadline, f"writers stalled: {writers.errors[:3]}"
            time.sleep(0.05)
        server.kill()
    acked = writers.acked
    server.start()
    with server.connect() as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM k").fetchall()]
        assert len(ids) == len(set(ids)), "duplicated rows after replay"
        assert acked <= set(ids), f"lost {len(acked - set(ids))} acknowledged rows"
        assert conn.execute("SELECT count(*), sum(id) FROM big").fetchone() == (40_000, sum(range(40_000)))
        # Sealing and replaying again from the checkpoint keeps everything.
        conn.execute("CHECKPOINT")
        conn.execute("INSERT INTO k VALUES (-1, '[1,2,3,4]')")
    server.crash_restart()
    with server.connect() as conn:
        assert conn.execute("SELECT count(*) FROM k").fetchone() == (len(ids) + 1,)
        assert conn.execute("SELECT count(*) FROM big").fetchone() == (40_000,)


def test_broker_outage_fails_writes_clearly_then_recovers(services, quiver_factory):
    broker, config = services
    server = quiver_factory(extra_args=["--config", config])
    with server.connect() as conn:
        conn.execute("CREATE TABLE o (id bigint PRIMARY KEY, v vector(4))")
    with Writers(server, 4, "o", stop_on_error=False) as writers:
        time.sleep(1.0)
        broker.kill()
        down_at = time.monotonic()
        with server.connect() as conn:
            with pytest.raises(psycopg.Error) as err:
                conn.execute("INSERT INTO o VALUES (-1, '[0,0,0,0]')")
            assert err.value.sqlstate == "58030", err.value
            assert "broker" in str(err.value), err.value
            # The session and the server stay usable; reads still work.
            conn.execute("SELECT count(*) FROM o").fetchone()
        time.sleep(max(0.0, 20 - (time.monotonic() - down_at)))
        with writers.lock:
            acked_while_down = len(writers.acked)
        broker.start()
        deadline = time.monotonic() + 60
        while True:
            with writers.lock:
                if len(writers.acked) > acked_while_down + 50:
                    break
            assert time.monotonic() < deadline, f"writes did not resume: {writers.errors[-3:]}"
            time.sleep(0.2)
    assert writers.errors, "writes must fail while the broker is down"
    acked = writers.acked
    with server.connect() as conn:
        ids = {r[0] for r in conn.execute("SELECT id FROM o").fetchall()}
    assert acked <= ids
    server.crash_restart()
    with server.connect() as conn:
        after = [r[0] for r in conn.execute("SELECT id FROM o").fetchall()]
    assert len(after) == len(set(after)) and acked <= set(after)
    # Failed writes that the broker kept anyway are not resurrected.
    assert set(after) == ids
