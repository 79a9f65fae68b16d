"""TLS between role processes (`[cluster.tls]`): a cluster of a
coordinator, a streaming node, a proxy, a query node and a data node on
etcd, every gRPC/Flight link encrypted and every role's certificate checked
against the cluster's CA.

Checked: SQL through the proxy works end to end (DDL, writes, an indexed
search served by the query node, built by the data node); `quiver probe`
reaches a role only with the cluster's TLS settings; a plain-text client
gets nothing from a role port; and a role whose certificate the cluster's
CA did not sign fails verification (while a client trusting its own CA
reaches it)."""

from __future__ import annotations

import subprocess

import numpy as np
import psycopg
import pytest

from conftest import quiver_bin, wait_for_index_builds
from services import Etcd, QuiverNode


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory, name):
    """A CA, and a role certificate it signs for 127.0.0.1."""
    directory.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name} CA",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=directory)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=quiver role",
            "-keyout", "node.key", "-out", "node.csr", cwd=directory)
    (directory / "ext.cnf").write_text(
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n")
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "ext.cnf", "-out", "node.crt", cwd=directory)
    return directory


def config_text(tls_dir, etcd, objects, query, data, coordinator, streaming):
    return f"""
[coordinator]
query_nodes = ["{query}"]
data_nodes = ["{data}"]
node_probe_interval_ms = 200
node_failure_timeout_ms = 2000
min_index_rows = 100

[streaming]
seal_rows = 300

[cluster]
coordinators = ["{coordinator}"]
streaming_nodes = ["{streaming}"]
secret = "tls-test-secret"

[cluster.tls]
cert = "{tls_dir / 'node.crt'}"
key = "{tls_dir / 'node.key'}"
ca = "{tls_dir / 'ca.crt'}"

[storage.meta]
kind = "etcd"
endpoints = ["{etcd.endpoint}"]
root = "/tls-test"
max_txn_ops = 1024

[storage.object]
kind = "local"
root = "{objects}"
"""


def probe(address, config=None):
    args = [str(quiver_bin()), "probe", address]
    if config:
        args += ["--config", str(config)]
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


@pytest.fixture
def tls_cluster(tmp_path):
    good = make_ca(tmp_path / "ca-good", "cluster")
    etcd = Etcd(tmp_path).start()
    config = tmp_path / "cluster.toml"
    node = lambda role, name: QuiverNode(tmp_path, role, name, config)  # noqa: E731
    nodes = {
        "query": node("query-node", "q1"),
        "data": node("data-node", "d1"),
        "coordinator": node("coordinator", "c1"),
        "streaming": node("streaming-node", "s1"),
        "proxy": node("proxy", "p1"),
    }
    config.write_text(config_text(
        good, etcd, tmp_path / "objects", nodes["query"].address, nodes["data"].address,
        nodes["coordinator"].address, nodes["streaming"].address))
    try:
        for name in ["query", "data", "coordinator", "streaming", "proxy"]:
            nodes[name].start()
        yield tmp_path, config, nodes
    finally:
        for n in nodes.values():
            n.kill()
        etcd.kill()


def test_roles_talk_over_tls_only(tls_cluster):
    base, config, nodes = tls_cluster
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((900, 8)).astype(np.float32)
    with psycopg.connect(host="127.0.0.1", port=nodes["proxy"].port, user="postgres",
                         dbname="postgres", autocommit=True, connect_timeout=10) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, v vector(8))")
        conn.execute("CREATE INDEX ON items USING diskann (v vector_l2_ops)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO items VALUES (%s, %s)",
                            [(i, str(list(map(float, v)))) for i, v in enumerate(vectors)])
        conn.execute("CHECKPOINT")
        wait_for_index_builds(conn)
        assert conn.execute(
            "SELECT count(*) FROM quiver.segments WHERE table_name = 'items' AND state = 'indexed'"
        ).fetchone()[0] >= 1
        q = vectors[3] + 0.01
        got = [r[0] for r in conn.execute(
            "SELECT id FROM items ORDER BY v <-> %s::vector LIMIT 5", (str(list(map(float, q))),))]
        assert got == np.argsort(((vectors - q) ** 2).sum(axis=1))[:5].tolist()

    # Health over TLS with the cluster's settings; nothing without them.
    for name in ["query", "data", "coordinator", "streaming"]:
        ok = probe(nodes[name].address, config)
        assert ok.returncode == 0 and ok.stdout.strip() == "SERVING", (name, ok.stdout, ok.stderr)
        plain = probe(nodes[name].address)
        assert plain.returncode == 1, (name, plain.stdout)

    # A query node whose certificate another CA signed: a client with the
    # cluster's CA (as every role is) refuses it; one trusting that CA does not.
    rogue_dir = make_ca(base / "ca-rogue", "rogue")
    rogue_config = base / "rogue.toml"
    rogue_config.write_text(config.read_text().replace(str(base / "ca-good"), str(rogue_dir)))
    rogue = QuiverNode(base, "query-node", "q-rogue", rogue_config).start()
    try:
        checked = probe(rogue.address, config)
        assert checked.returncode == 1, checked.stdout
        assert probe(rogue.address, rogue_config).returncode == 0
    finally:
        rogue.kill()

    # A file that holds no certificate fails start-up, naming it.
    bogus = base / "bogus.crt"
    bogus.write_text("not a certificate\n")
    bogus_config = base / "bogus.toml"
    bogus_config.write_text(config.read_text().replace(str(base / "ca-good" / "node.crt"), str(bogus)))
    failed = probe(nodes["query"].address, bogus_config)
    assert failed.returncode != 0 and str(bogus) in failed.stderr, failed.stderr
