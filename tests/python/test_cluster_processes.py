"""Every role its own process, on real etcd, a real Kafka-protocol broker
(tansu) and a real S3-compatible server (s3s-fs): two coordinators (a
leader and a standby elected on etcd), two streaming nodes sharing the
shards (each serves one of the two), two proxies, two query nodes and a
data node.

Checked: the proxies serve one database (DDL, roles and rows made through
one are seen through the other at once, exact and indexed search equal
exact results computed here); read-your-writes across proxies by handing
over `quiver.last_write_ts`; kill -9 of the leading coordinator under write
load: the standby takes over, writes and DDL continue, timestamps keep
growing, and every acknowledged row is there exactly once; the same for
kill -9 of a streaming node (the other takes its shard over, replaying the
shard's WAL from its checkpoint); kill -9 of a proxy leaves the other serving; the
broker stopped for 20 s under write load: writes fail with SQLSTATE 58030
naming the broker and succeed again once it is back; then every process of
the cluster killed and started again: all acknowledged rows are there;
etcd frozen: the leading coordinator and both streaming nodes stop before
their leases lapse; once etcd answers again the standby coordinator leads,
restarted streaming nodes share the shards again, and the data is all
there."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import psycopg
import pytest

from conftest import wait_for_index_builds
from services import Etcd, KafkaBroker, QuiverNode, S3Server

FAILURE_TIMEOUT_MS = 2000
# Every process of the test cluster authenticates its calls with it.
CLUSTER_SECRET = "test-cluster-secret"
# 08007: a write cut off by a failure may or may not have been applied.
RETRYABLE = {"08006", "08007", "08001", "57P01"}


class Cluster:
    def __init__(self, base):
        self.etcd, self.broker, self.s3 = Etcd(base), KafkaBroker(base), S3Server(base)
        try:
            self._start(base)
        except BaseException:
            # Nothing may outlive a failed start-up.
            self.stop()
            raise

    def _start(self, base):
        self.etcd.start()
        self.broker.start()
        self.s3.start()
        self.config = base / "cluster.toml"
        node = lambda role, name: QuiverNode(base, role, name, self.config)  # noqa: E731
        self.query = [node("query-node", "q1"), node("query-node", "q2")]
        self.data = node("data-node", "d1")
        self.coordinators = [node("coordinator", "c1"), node("coordinator", "c2")]
        self.streaming = [node("streaming-node", "s1"), node("streaming-node", "s2")]
        self.proxies = [node("proxy", "p1"), node("proxy", "p2")]
        addresses = lambda nodes: ", ".join(f'"{n.address}"' for n in nodes)  # noqa: E731
        self.config.write_text(
            f"""
[coordinator]
query_nodes = [{addresses(self.query)}]
data_nodes = ["{self.data.address}"]
node_probe_interval_ms = 200
node_failure_timeout_ms = {FAILURE_TIMEOUT_MS}
min_index_rows = 100

[streaming]
seal_rows = 400

[cluster]
coordinators = [{addresses(self.coordinators)}]
streaming_nodes = [{addresses(self.streaming)}]
secret = "{CLUSTER_SECRET}"

[storage.wal]
kind = "kafka"
brokers = "{self.broker.bootstrap}"
topic = "quiver-cluster-wal"
delivery_timeout_ms = 5000
delete_sealed_records = false

[storage.meta]
kind = "etcd"
endpoints = ["{self.etcd.endpoint}"]
root = "/cluster-test"
max_txn_ops = 1024
"""
            + self.s3.config_toml()
        )
        for n in [*self.query, self.data]:
            n.start()
        self.coordinators[0].start()
        # The standby does not listen until it leads.
        self.coordinators[1].start(wait=False)
        for n in self.streaming:
            n.start()
        for p in self.proxies:
            p.start()

    def all_nodes(self):
        if not hasattr(self, "proxies"):
            return []
        return [*self.proxies, *self.streaming, *self.coordinators, self.data, *self.query]

    def connect(self, proxy: int, **kwargs):
        return psycopg.connect(host="127.0.0.1", port=self.proxies[proxy].port,
                               user=kwargs.pop("user", "postgres"), dbname="postgres",
                               autocommit=True, connect_timeout=10, **kwargs)

    def stop(self):
        for n in self.all_nodes():
            n.kill()
        self.s3.stop()
        self.broker.kill()
        self.etcd.kill()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop()


def exact_top(vectors: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    return [int(i) for i in np.argsort(((vectors - q) ** 2).sum(axis=1), kind="stable")[:k]]


def insert(conn, ids, vectors):
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO items (id, v) VALUES (%s, %s)",
                        [(int(i), str(list(map(float, v)))) for i, v in zip(ids, vectors)])


def test_proxies_serve_one_database(cluster):
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(1200, 8)).astype(np.float32)
    with cluster.connect(0) as a, cluster.connect(1) as b:
        a.execute("CREATE TABLE items (id bigint PRIMARY KEY, v vector(8))")
        # Made through one proxy, usable through the other at once.
        insert(b, range(600), vectors[:600])
        insert(a, range(600, 1200), vectors[600:])
        a.execute("CHECKPOINT")
        assert b.execute("SELECT count(*) FROM items").fetchone()[0] == 1200
        b.execute("CREATE INDEX ON items USING diskann (v vector_l2_ops)")
        wait_for_index_builds(a)
        builds = a.execute("SELECT state, count(*) FROM quiver.index_builds GROUP BY state").fetchall()
        assert dict(builds).get("done", 0) >= 2, builds
        for q in rng.normal(size=(10, 8)).astype(np.float32):
            literal = str(list(map(float, q)))
            for conn in (a, b):
                got = [r[0] for r in conn.execute(
                    "SELECT id FROM items ORDER BY v <-> %s LIMIT 5", (literal,)).fetchall()]
                assert got == exact_top(vectors, q, 5)
        nodes = {r[0] for r in b.execute(
            "SELECT query_node FROM quiver.segments WHERE state <> 'growing'").fetchall()}
        assert nodes == {n.address for n in cluster.query}, nodes

        # A role made through one proxy logs in through the other.
        a.execute("CREATE ROLE reader LOGIN")
    with cluster.connect(1, user="reader") as r:
        assert r.execute("SELECT current_user, session_user").fetchone() == ("reader", "reader")
    with pytest.raises(psycopg.OperationalError, match="role \"nobody\" does not exist"):
        cluster.connect(1, user="nobody")

    # Read-your-writes across proxies for a session that reads at bounded
    # staleness: hand over the last write's timestamp.
    with cluster.connect(0) as a:
        a.execute("INSERT INTO items (id, v) VALUES (5000, %s)", (str([0.0] * 8),))
        ts = int(a.execute("SHOW quiver.last_write_ts").fetchone()[0])
        assert ts > 0
    with cluster.connect(1) as b:
        b.execute("SET quiver.consistency = 'bounded'")
        b.execute(f"SET quiver.last_write_ts = {ts}")
        assert b.execute("SELECT count(*) FROM items WHERE id = 5000").fetchone()[0] == 1
        with pytest.raises(psycopg.Error) as bad:
            b.execute("SET quiver.last_write_ts = 'soon'")
        assert bad.value.sqlstate == "22023"
        assert b.execute("SELECT 1").fetchone()[0] == 1


class WriteLoad:
    """8 writers inserting through both proxies; rows acknowledged are
    recorded, failures must be retryable."""

    def __init__(self, cluster, writers: int = 8, allowed: set[str] = RETRYABLE):
        self.cluster = cluster
        self.allowed = allowed
        self.acknowledged: set[int] = set()
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.writer, args=(w, writers))
                        for w in range(writers)]
        for t in self.threads:
            t.start()

    def writer(self, w: int, writers: int):
        next_id = 1 + w
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = self.cluster.connect(w % 2)
                conn.execute("INSERT INTO items (id, v) VALUES (%s, %s)",
                             (next_id, str([float(next_id % 7)] * 8)))
                with self.lock:
                    self.acknowledged.add(next_id)
                next_id += writers
            except psycopg.Error as e:
                self.failures.append(e.sqlstate or "connection")
                if e.sqlstate is not None and e.sqlstate not in self.allowed:
                    self.stop.set()
                    raise
                # The outcome of a write cut off by a failure is unknown (as
                # with any lost connection): never reuse its id.
                next_id += writers
                if conn is not None and conn.closed:
                    conn = None
                time.sleep(0.05)
        if conn is not None:
            conn.close()

    def count(self) -> int:
        with self.lock:
            return len(self.acknowledged)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        assert all(not t.is_alive() for t in self.threads)
        assert set(self.failures) <= self.allowed | {"connection"}, set(self.failures)


def wait_elected(node: QuiverNode, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while b"elected leader" not in node.log_path.read_bytes():
        assert time.monotonic() < deadline, f"{node.name} was not elected"
        time.sleep(0.2)


def shards_taken(node: QuiverNode) -> int:
    return node.log_path.read_bytes().count(b"shard taken over")


def wait_shards_taken(node: QuiverNode, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while shards_taken(node) < count:
        assert time.monotonic() < deadline, f"{node.name} took {shards_taken(node)} shards, not {count}"
        time.sleep(0.2)


def kill_under_writes(cluster, victim: QuiverNode, survivor: QuiverNode,
                      taken_over=None) -> WriteLoad:
    """Kills `victim` under an 8-writer load; `taken_over()` returns once
    `survivor` serves in its place."""
    load = WriteLoad(cluster)
    time.sleep(2)
    killed_at = time.monotonic()
    victim.kill()
    (taken_over or (lambda: wait_elected(survivor)))()
    at_takeover = load.count()
    print(f"{survivor.name} took over {time.monotonic() - killed_at:.1f} s after the kill; "
          f"{at_takeover} rows acknowledged so far")
    time.sleep(3)
    load.finish()
    assert load.count() > at_takeover, "no write succeeded after the takeover"
    print(f"{load.count()} rows acknowledged, {len(load.failures)} retryable failures")
    return load


def assert_rows(conn, acknowledged: set[int]):
    # Right after a failover a segment the new leader sealed may not be
    # placed yet: the read fails with a retryable error, never short.
    deadline = time.monotonic() + 15
    while True:
        try:
            ids = [r[0] for r in conn.execute("SELECT id FROM items").fetchall()]
            break
        except psycopg.Error as e:
            if e.sqlstate not in RETRYABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert len(ids) == len(set(ids)), "a row is duplicated"
    assert acknowledged <= set(ids), sorted(acknowledged - set(ids))[:10]


def test_leader_coordinator_killed_under_writes(cluster):
    with cluster.connect(0) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, v vector(8))")
        conn.execute("INSERT INTO items (id, v) VALUES (0, %s)", (str([0.0] * 8),))
        before = int(conn.execute("SHOW quiver.last_write_ts").fetchone()[0])
    load = kill_under_writes(cluster, *cluster.coordinators)
    with cluster.connect(1) as conn:
        # DDL continues on the new leader, and timestamps kept growing.
        conn.execute("CREATE TABLE after_failover (id int PRIMARY KEY)")
        conn.execute("INSERT INTO after_failover VALUES (1)")
        after = int(conn.execute("SHOW quiver.last_write_ts").fetchone()[0])
        assert after > before
        assert_rows(conn, load.acknowledged | {0})


def test_streaming_node_killed_under_writes(cluster):
    victim, survivor = cluster.streaming
    with cluster.connect(0) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, v vector(8))")
        # Both nodes serve: each owns one of the two shards, and a statement
        # over both commits across them.
        wait_shards_taken(victim, 1)
        wait_shards_taken(survivor, 1)
        conn.execute("INSERT INTO items (id, v) SELECT -i, '[1,1,1,1,1,1,1,1]' "
                     "FROM generate_series(1, 50) AS g(i)")
    before = shards_taken(survivor)
    load = kill_under_writes(cluster, victim, survivor,
                             taken_over=lambda: wait_shards_taken(survivor, before + 1))
    spread = range(-50, 0)
    for proxy in (0, 1):
        with cluster.connect(proxy) as conn:
            assert_rows(conn, load.acknowledged | set(spread))
    # The killed node comes back and takes its share again.
    victim.start()
    wait_shards_taken(victim, 2, timeout=60)
    with cluster.connect(0) as conn:
        conn.execute("INSERT INTO items (id, v) SELECT -i, '[1,1,1,1,1,1,1,1]' "
                     "FROM generate_series(51, 60) AS g(i)")
        assert_rows(conn, load.acknowledged | set(range(-60, 0)))


def test_proxy_killed(cluster):
    with cluster.connect(0) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, v vector(8))")
        insert(conn, range(500), np.ones((500, 8), dtype=np.float32))
    cluster.proxies[0].kill()
    with cluster.connect(1) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 500
        insert(conn, range(500, 900), np.ones((400, 8), dtype=np.float32))
    cluster.proxies[0].start()
    with cluster.connect(0) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM items").fetchall()]
        assert sorted(ids) == list(range(900))


def test_a_process_without_the_cluster_secret_is_refused(cluster, tmp_path):
    # Reaching the coordinator's port is not enough to act on the cluster.
    for name, secret in [("intruder", None), ("wrong", "not-the-secret")]:
        config = tmp_path / f"{name}.toml"
        text = cluster.config.read_text().replace(f'secret = "{CLUSTER_SECRET}"\n', "")
        if secret:
            text = text.replace("[cluster]\n", f'[cluster]\nsecret = "{secret}"\n')
        config.write_text(text)
        proxy = QuiverNode(tmp_path, "proxy", name, config)
        proxy.start(wait=False)
        try:
            proxy.proc.wait(timeout=60)
        finally:
            if proxy.alive():
                proxy.kill()
        assert proxy.proc.returncode != 0
        assert "cluster secret" in proxy.log(), proxy.log()[-2000:]
    # Health probes carry no secret and still get an answer; the cluster
    # itself is untouched.
    assert cluster.query[0].probe().stdout.strip() == "SERVING"
    with cluster.connect(0) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_broker_outage_then_whole_cluster_restart(cluster):
    with cluster.connect(0) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, v vector(8))")
    load = WriteLoad(cluster, allowed=RETRYABLE | {"58030"})
    time.sleep(1)
    cluster.broker.kill()
    down_at = time.monotonic()
    with cluster.connect(1) as conn:
        with pytest.raises(psycopg.Error) as err:
            conn.execute("INSERT INTO items (id, v) VALUES (-1, %s)", (str([0.0] * 8),))
        assert err.value.sqlstate == "58030" and "broker" in str(err.value), err.value
        # The session stays usable; reads keep working.
        conn.execute("SELECT count(*) FROM items").fetchone()
    time.sleep(max(0.0, 20 - (time.monotonic() - down_at)))
    acked_while_down = load.count()
    cluster.broker.start()
    deadline = time.monotonic() + 60
    while load.count() < acked_while_down + 50:
        assert time.monotonic() < deadline, f"writes did not resume: {load.failures[-3:]}"
        time.sleep(0.2)
    load.finish()
    assert "58030" in load.failures, "writes must fail while the broker is down"
    with cluster.connect(0) as conn:
        assert_rows(conn, load.acknowledged)

    # Every Quiver process killed and started again: nothing acknowledged lost.
    for node in cluster.all_nodes():
        node.kill()
    for node in [*cluster.query, cluster.data]:
        node.start()
    for node in cluster.coordinators:
        node.start(wait=False)
    for node in cluster.streaming:
        node.start()
    for proxy in cluster.proxies:
        proxy.start()
    # Until the new leaders are elected and have recovered, statements fail
    # with the retryable 08006, as a client would see.
    deadline = time.monotonic() + 60
    for proxy in (0, 1):
        while True:
            try:
                with cluster.connect(proxy) as conn:
                    assert_rows(conn, load.acknowledged)
                break
            except psycopg.Error as e:
                assert e.sqlstate in RETRYABLE and time.monotonic() < deadline, e


def test_leaders_cut_off_from_etcd_step_down(cluster):
    """A process that cannot renew its lease must stop before another may
    take its place: etcd frozen (SIGSTOP) makes the leading coordinator and
    both streaming nodes (each holding a shard's owner key) exit; once etcd
    answers again the standby coordinator leads, the streaming nodes
    started again share the shards, and the data is all there."""
    with cluster.connect(0) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, v vector(8))")
        insert(conn, range(300), np.ones((300, 8), dtype=np.float32))
    leaders = [cluster.coordinators[0], *cluster.streaming]
    cluster.etcd.proc.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + FAILURE_TIMEOUT_MS / 1000 + 5
        while any(n.alive() for n in leaders) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(n.alive() for n in leaders), "a leader kept acting without its lease"
        assert b"lost its leadership" in cluster.coordinators[0].log_path.read_bytes()
        for node in cluster.streaming:
            assert b"could not be renewed" in node.log_path.read_bytes(), node.name
    finally:
        cluster.etcd.proc.send_signal(signal.SIGCONT)
    wait_elected(cluster.coordinators[1], timeout=60)
    for node in cluster.streaming:
        node.start()
    deadline = time.monotonic() + 60
    while True:
        try:
            with cluster.connect(1) as conn:
                # A retried statement may have been applied already (08007).
                conn.execute("INSERT INTO items (id, v) SELECT i, '[1,1,1,1,1,1,1,1]' "
                             "FROM generate_series(300, 399) AS g(i) ON CONFLICT DO NOTHING")
                ids = sorted(r[0] for r in conn.execute("SELECT id FROM items").fetchall())
            break
        except psycopg.Error as e:
            assert e.sqlstate in RETRYABLE and time.monotonic() < deadline, e
            time.sleep(0.5)
    assert ids == list(range(400))
