"""Query and data nodes as processes of their own (`quiver query-node`,
`quiver data-node`), reached over gRPC/Flight, with segments and index files
on a real S3-compatible server. The proxy process (`quiver standalone` with
`[coordinator] query_nodes / data_nodes`) keeps the coordinator and the
streaming node.

Checked: results equal exact search computed here (plain, filtered, scans,
aggregates) with sealed segments spread over two query nodes; indexes are
built by the data node and searched on the query nodes; a query node killed
with -9 makes queries fail with the retryable SQLSTATE 08006 or return
complete results -- never partial ones -- until its segments are loaded
onto the other node; it rejoins after a restart and takes new segments; the
proxy restarts onto the same nodes; `quiver probe` reports health."""

from __future__ import annotations

import time

import numpy as np
import psycopg
import pytest

from conftest import wait_for_index_builds
from services import Etcd, QuiverNode, S3Server

DIM = 32
ROWS = 12_000
FAILURE_TIMEOUT_MS = 1500


@pytest.fixture
def cluster(tmp_path, quiver_factory):
    s3 = S3Server(tmp_path).start()
    config = tmp_path / "cluster.toml"
    nodes = {
        "qa": QuiverNode(tmp_path, "query-node", "qa", config),
        "qb": QuiverNode(tmp_path, "query-node", "qb", config),
        "data": QuiverNode(tmp_path, "data-node", "data", config),
    }
    config.write_text(
        f"""
[coordinator]
query_nodes = ["{nodes['qa'].address}", "{nodes['qb'].address}"]
data_nodes = ["{nodes['data'].address}"]
node_probe_interval_ms = 200
node_failure_timeout_ms = {FAILURE_TIMEOUT_MS}

[streaming]
seal_rows = 1500
"""
        + s3.config_toml()
    )
    for node in nodes.values():
        node.start()
    proxy = quiver_factory(extra_args=["--config", str(config)])
    yield proxy, nodes
    for node in nodes.values():
        node.kill()
    s3.stop()


def vec(v) -> str:
    return "[" + ",".join(f"{x:.6f}" for x in v) + "]"


def load(conn, data, first_id=0, statement_rows=1000):
    """COPY in statements of `statement_rows` (a shard seals at statement
    boundaries, so this makes several segments per shard)."""
    for start in range(0, len(data), statement_rows):
        with conn.cursor().copy("COPY items (id, cat, v) FROM STDIN") as copy:
            for i in range(start, min(start + statement_rows, len(data))):
                copy.write_row((first_id + i, (first_id + i) % 10, vec(data[i])))
    conn.execute("CHECKPOINT")


def exact_ids(data, q, k=10, mask=None):
    d = ((data - q) ** 2).sum(axis=1)
    if mask is not None:
        d = np.where(mask, d, np.inf)
    return [int(i) for i in np.argsort(d, kind="stable")[:k]]


def knn(conn, q, k=10, where=""):
    return [r[0] for r in conn.execute(
        f"SELECT id FROM items {where} ORDER BY v <-> '{vec(q)}' LIMIT {k}").fetchall()]


def test_segments_served_by_remote_query_nodes(cluster):
    proxy, nodes = cluster
    rng = np.random.default_rng(11)
    data = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    queries = rng.standard_normal((6, DIM)).astype(np.float32)
    cats = np.arange(ROWS) % 10
    with proxy.connect() as conn:
        conn.execute(f"CREATE TABLE items (id bigint PRIMARY KEY, cat int, v vector({DIM}))")
        load(conn, data)
        sealed = conn.execute(
            "SELECT count(*) FROM quiver.segments WHERE table_name = 'items' AND state <> 'growing'"
        ).fetchone()[0]
        assert sealed >= 4
        # Both query nodes were given segments, evenly.
        for name in ("qa", "qb"):
            assert "query.load_segments" in nodes[name].log(), name
        served = dict(conn.execute(
            "SELECT query_node, count(*) FROM quiver.segments "
            "WHERE table_name = 'items' AND state <> 'growing' GROUP BY query_node").fetchall())
        assert set(served) == {nodes["qa"].address, nodes["qb"].address}, served
        assert abs(served[nodes["qa"].address] - served[nodes["qb"].address]) <= 1, served

        # Exact search, filtered search, scans and aggregates over Flight.
        for q in queries:
            assert knn(conn, q) == exact_ids(data, q)
            assert knn(conn, q, where="WHERE cat = 3") == exact_ids(data, q, mask=cats == 3)
            # A filter calling a vector function is decoded on the query node.
            near = np.sqrt(((data - q) ** 2).sum(axis=1)) < 7.0
            assert knn(conn, q, where=f"WHERE cat < 5 AND v <-> '{vec(q)}' < 7.0") == exact_ids(
                data, q, mask=(cats < 5) & near)
        assert conn.execute("SELECT count(*), sum(id) FROM items").fetchone() == (
            ROWS, ROWS * (ROWS - 1) // 2)
        assert conn.execute("SELECT count(*) FROM items WHERE cat = 7").fetchone()[0] == ROWS // 10
        row = conn.execute("SELECT v FROM items WHERE id = 4321").fetchone()[0]
        assert np.allclose(np.array(eval(row), dtype=np.float32), data[4321], atol=1e-5)

        # Index builds run on the data node; searches use them on the query nodes.
        conn.execute("CREATE INDEX ON items USING diskann (v)")
        wait_for_index_builds(conn)
        states = conn.execute("SELECT DISTINCT state FROM quiver.index_builds").fetchall()
        assert states == [("done",)]
        assert "data.build_index" in nodes["data"].log()
        assert not (proxy.data_dir / "data-node").exists()
        conn.execute("SET diskann.search_list = 100")
        plan = "\n".join(str(r[-1]) for r in conn.execute(
            f"EXPLAIN ANALYZE SELECT id FROM items ORDER BY v <-> '{vec(queries[0])}' LIMIT 10"
        ).fetchall())
        assert "segments_exact=0" in plan and "segments_by_index=0" not in plan, plan
        recall = np.mean([len(set(knn(conn, q)) & set(exact_ids(data, q))) / 10 for q in queries])
        assert recall >= 0.95
        indexed = [knn(conn, q) for q in queries]

    # The proxy restarts (kill -9) onto the same nodes and bucket.
    proxy.crash_restart()
    with proxy.connect() as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == ROWS
        conn.execute("SET diskann.search_list = 100")
        assert [knn(conn, q) for q in queries] == indexed
        assert conn.execute("SELECT DISTINCT state FROM quiver.index_builds").fetchall() == [("done",)]

    # A dead node's indexed segments move with their indexes.
    nodes["qa"].kill()
    deadline = time.monotonic() + 20
    with proxy.connect() as conn:
        conn.execute("SET diskann.search_list = 100")
        while True:
            try:
                moved = [knn(conn, q) for q in queries]
                break
            except psycopg.Error as err:
                assert err.sqlstate == "08006", err
                assert time.monotonic() < deadline, "the segments never moved"
                time.sleep(0.2)
        assert moved == indexed
        plan = "\n".join(str(r[-1]) for r in conn.execute(
            f"EXPLAIN ANALYZE SELECT id FROM items ORDER BY v <-> '{vec(queries[0])}' LIMIT 10"
        ).fetchall())
        assert "segments_exact=0" in plan and "segments_by_index=0" not in plan, plan

    # Health: the standard gRPC health service, through `quiver probe`.
    probe = nodes["qb"].probe()
    assert probe.returncode == 0 and probe.stdout.strip() == "SERVING", probe
    nodes["data"].kill()
    probe = nodes["data"].probe()
    assert probe.returncode == 1 and "UNREACHABLE" in probe.stdout, probe


def test_dead_query_node_fails_queries_retryably_then_moves(cluster):
    proxy, nodes = cluster
    rng = np.random.default_rng(12)
    data = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    queries = rng.standard_normal((4, DIM)).astype(np.float32)
    with proxy.connect() as conn:
        conn.execute(f"CREATE TABLE items (id bigint PRIMARY KEY, cat int, v vector({DIM}))")
        load(conn, data)
        expected = [exact_ids(data, q) for q in queries]
        for q, e in zip(queries, expected):
            assert knn(conn, q) == e

    nodes["qa"].kill()
    complete = failed = 0
    deadline = time.monotonic() + FAILURE_TIMEOUT_MS / 1000 + 6
    with proxy.connect() as conn:
        while time.monotonic() < deadline:
            for q, e in zip(queries, expected):
                try:
                    got = knn(conn, q)
                    count = conn.execute("SELECT count(*) FROM items").fetchone()[0]
                except psycopg.Error as err:
                    assert err.sqlstate == "08006", err
                    failed += 1
                    continue
                # Never a partial result.
                assert got == e
                assert count == ROWS
                complete += 1
            time.sleep(0.05)
        # Writes never depended on the query node.
        conn.execute("INSERT INTO items VALUES (%s, 1, %s)", (ROWS, vec(data[0])))
        # The dead node's segments now live on the other node.
        for q, e in zip(queries, expected):
            assert knn(conn, q) == e
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == ROWS + 1
    print(f"during the failure window: {complete} complete, {failed} failed with 08006")
    assert failed > 0, "queries during the failure window must fail, not return partial results"
    assert complete > 0

    # The node comes back empty, rejoins and takes new segments.
    log_before = len(nodes["qa"].log())
    nodes["qa"].start()
    deadline = time.monotonic() + 10
    more = rng.standard_normal((3000, DIM)).astype(np.float32)
    with proxy.connect() as conn:
        while "query node is alive" not in proxy.log_tail(200000):
            assert time.monotonic() < deadline, "the restarted node did not rejoin"
            time.sleep(0.1)
        load(conn, more, first_id=ROWS + 1)
        assert "query.load_segments" in nodes["qa"].log()[log_before:]
        everything = np.vstack([data, data[:1], more])
        for q in queries:
            assert knn(conn, q) == exact_ids(everything, q)
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == len(everything)


def test_query_nodes_register_in_etcd(tmp_path, quiver_factory):
    """With `discover_query_nodes`, query nodes are found through leased keys
    in etcd (data nodes too): a node that starts later takes its share of the rows, and a node killed
    with -9 loses its key when the lease runs out, after which its segments
    are served by the other node."""
    etcd = Etcd(tmp_path).start()
    s3 = S3Server(tmp_path).start()
    config = tmp_path / "discover.toml"
    qa = QuiverNode(tmp_path, "query-node", "qa", config)
    qb = QuiverNode(tmp_path, "query-node", "qb", config)
    data_node = QuiverNode(tmp_path, "data-node", "data", config)
    config.write_text(
        f"""
[coordinator]
discover_query_nodes = true
discover_data_nodes = true
node_probe_interval_ms = 200
node_failure_timeout_ms = 2000

[streaming]
seal_rows = 1500

[storage.meta]
kind = "etcd"
endpoints = ["{etcd.endpoint}"]
root = "/quiver-discovery"
"""
        + s3.config_toml()
    )
    try:
        qa.start()
        data_node.start()
        proxy = quiver_factory(extra_args=["--config", str(config)])
        rng = np.random.default_rng(13)
        data = rng.standard_normal((6000, DIM)).astype(np.float32)
        queries = rng.standard_normal((4, DIM)).astype(np.float32)
        with proxy.connect() as conn:
            conn.execute(f"CREATE TABLE items (id bigint PRIMARY KEY, cat int, v vector({DIM}))")
            load(conn, data)
            for q in queries:
                assert knn(conn, q) == exact_ids(data, q)
            assert etcd.keys("/quiver-discovery/nodes/query/") == [
                f"/quiver-discovery/nodes/query/{qa.address}"]
            # The data node is found through the registry too.
            assert etcd.keys("/quiver-discovery/nodes/data/") == [
                f"/quiver-discovery/nodes/data/{data_node.address}"]
            conn.execute("CREATE INDEX items_v ON items USING diskann (v)")
            wait_for_index_builds(conn)
            assert conn.execute("SELECT DISTINCT state FROM quiver.index_builds").fetchall() == [("done",)]
            assert "data.build_index" in data_node.log()
            # Exact search again, so the rest compares with exact results.
            conn.execute("DROP INDEX items_v")

            # A node that registers later takes half of the existing rows
            # (segments move while statements keep returning exact results)
            # and then its share of new segments.
            qb.start()
            deadline = time.monotonic() + 10
            while not any("query node registered" in line and qb.address in line
                          for line in proxy.log_tail(100000).splitlines()):
                assert time.monotonic() < deadline, "the second node was not discovered"
                time.sleep(0.1)
            expected = [exact_ids(data, q) for q in queries]
            deadline = time.monotonic() + 20
            while True:
                assert [knn(conn, q) for q in queries] == expected
                rows = dict(conn.execute(
                    "SELECT query_node, sum(rows) FROM quiver.segments "
                    "WHERE state <> 'growing' GROUP BY query_node").fetchall())
                if abs(rows.get(qa.address, 0) - rows.get(qb.address, 0)) <= 2000:
                    break
                assert time.monotonic() < deadline, f"no segment moved to the new node: {rows}"
                time.sleep(0.2)
            log_before = len(qb.log())
            more = rng.standard_normal((3000, DIM)).astype(np.float32)
            load(conn, more, first_id=len(data))
            assert "query.load_segments" in qb.log()[log_before:]
            everything = np.vstack([data, more])

            # kill -9: the lease lapses, the key goes, the segments move.
            qa.kill()
            expected = [exact_ids(everything, q) for q in queries]
            deadline = time.monotonic() + 20
            while True:
                try:
                    # Complete and exact, or a retryable error: never partial.
                    got = [knn(conn, q) for q in queries]
                    assert got == expected
                    if not etcd.keys("/quiver-discovery/nodes/query/" + qa.address):
                        break
                except psycopg.Error as err:
                    assert err.sqlstate == "08006", err
                assert time.monotonic() < deadline, "the dead node's segments never moved"
                time.sleep(0.2)
            assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == len(everything)

        # A node stopped with SIGTERM removes its key itself, well before
        # its 2-second lease could lapse.
        qb.proc.terminate()
        deadline = time.monotonic() + 1.5
        while etcd.keys("/quiver-discovery/nodes/query/" + qb.address):
            assert time.monotonic() < deadline, "a stopping node must deregister"
            time.sleep(0.05)
        assert qb.proc.wait(timeout=10) == 0
    finally:
        for node in (qa, qb, data_node):
            node.kill()
        s3.stop()
        etcd.kill()
