"""scripts/dev-cluster.sh starts a whole local cluster -- etcd, tansu
(Kafka protocol), s3s-fs (S3), a data node and two query nodes registered
in etcd, two coordinators (a leader and a standby), two streaming nodes
sharing the shards and two proxies, each its own process -- and stops exactly the
processes it started; data survives stop + start on the same directory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg

from conftest import REPO_ROOT, free_port, quiver_bin

SCRIPT = REPO_ROOT / "scripts" / "dev-cluster.sh"


def run(command: str, directory: Path, port: int, port2: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), command, str(directory)],
        env={**os.environ, "QUIVER_BIN": str(quiver_bin()), "QUIVER_PORT": str(port),
             "QUIVER_PORT2": str(port2)},
        capture_output=True, text=True, timeout=300,
    )


def alive(pid: int) -> bool:
    """Running (not exited; an exited child of init may linger as a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def pids(directory: Path) -> list[int]:
    return [int(line.split()[1]) for line in (directory / "pids").read_text().splitlines()]


def test_start_stop_and_restart(tmp_path):
    directory = tmp_path / "cluster"
    port, port2 = free_port(), free_port()
    started = run("start", directory, port, port2)
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        for name in ("query-node-2", "coordinator", "streaming-node", "coordinator-2",
                     "streaming-node-2", "proxy-1", "proxy-2"):
            assert f"running  {name}" in started.stdout, started.stdout
        assert run("status", directory, port).returncode == 0
        # Every Quiver process answers the gRPC health protocol.
        ports = dict(line.split("=") for line in (directory / "ports").read_text().split())
        for name in ("HEALTH_PORT", "HEALTH2_PORT", "COORDINATOR_PORT", "STREAMING_PORT",
                     "QUERY1_PORT", "QUERY2_PORT", "DATA_PORT"):
            probe = subprocess.run([str(quiver_bin()), "probe", f"127.0.0.1:{ports[name]}"],
                                   capture_output=True, text=True, timeout=30)
            assert probe.returncode == 0 and probe.stdout.strip() == "SERVING", (name, probe)
        first = pids(directory)
        assert len(first) == 12 and all(alive(pid) for pid in first)
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, v vector(3))")
            conn.execute("INSERT INTO t VALUES (1,'[1,2,1]'),(2,'[2,4,1]'),(3,'[3,6,1]')")
            conn.execute("CHECKPOINT")
            conn.execute("INSERT INTO t VALUES (4,'[4,8,1]')")
        # The other proxy sees the table and every row at once.
        with psycopg.connect(host="127.0.0.1", port=port2, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            assert [r[0] for r in conn.execute(
                "SELECT id FROM t ORDER BY v <-> '[3.2,6.4,1]' LIMIT 2").fetchall()] == [3, 4]
            nodes = {r[0] for r in conn.execute(
                "SELECT query_node FROM quiver.segments WHERE state <> 'growing'").fetchall()}
            assert nodes and all(n and n.startswith("127.0.0.1:") for n in nodes), nodes
    finally:
        stopped = run("stop", directory, port)
    assert stopped.returncode == 0, stopped.stderr
    assert not any(alive(pid) for pid in first)
    assert not (directory / "pids").exists()

    # Same directory: the same data comes back from etcd, the broker and S3.
    assert run("start", directory, port).returncode == 0
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres") as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 4
    finally:
        run("stop", directory, port)
