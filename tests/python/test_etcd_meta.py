"""Metadata on a real etcd (`[storage.meta] kind = "etcd"`): the catalog,
sequences, roles, segment and index manifests, WAL checkpoints and TSO
windows live under the configured root in etcd, not in the data directory;
they survive kill -9 of Quiver and of etcd; an etcd outage fails DDL with a
clear error while the server and the session stay up."""

from __future__ import annotations

import subprocess
import time

import psycopg
import pytest

from conftest import free_port, wait_for_index_builds
from services import Etcd

ROOT = "/qtest"


@pytest.fixture
def etcd(tmp_path):
    server = Etcd(tmp_path).start()
    yield server
    server.kill()


def etcd_config(tmp_path, etcd: Etcd) -> str:
    path = tmp_path / "etcd.toml"
    path.write_text(
        f"""
[coordinator]
min_index_rows = 100

[storage.meta]
kind = "etcd"
endpoints = ["{etcd.endpoint}"]
root = "{ROOT}"
timeout_ms = 2000
max_txn_ops = 1024
"""
    )
    return str(path)


def test_metadata_lives_in_etcd_and_survives_kill_9(etcd, quiver_factory, tmp_path):
    server = quiver_factory(extra_args=["--config", etcd_config(tmp_path, etcd)])
    with server.connect() as conn:
        conn.execute("CREATE TABLE docs (id bigserial PRIMARY KEY, tag text, v vector(8))")
        with conn.cursor().copy("COPY docs (tag, v) FROM STDIN") as copy:
            for i in range(1500):
                copy.write_row((f"t{i % 3}", "[" + ",".join(str((i * 7 + d) % 11) for d in range(8)) + "]"))
        conn.execute("CHECKPOINT")
        conn.execute("CREATE INDEX docs_v ON docs USING diskann (v)")
        conn.execute("CREATE ROLE reader LOGIN PASSWORD 'secret'")
        wait_for_index_builds(conn)
        builds = conn.execute("SELECT segment_id, state FROM quiver.index_builds ORDER BY 1").fetchall()
        assert builds and all(state == "done" for _, state in builds)
        before = conn.execute("SELECT max(id), count(*) FROM docs").fetchone()
        query = "SELECT id FROM docs ORDER BY v <-> '[1,2,3,4,5,6,7,8]' LIMIT 5"
        nearest = conn.execute(query).fetchall()

    keys = etcd.keys(ROOT + "/")
    assert any(k.startswith(f"{ROOT}/catalog/tables/docs") for k in keys), keys
    assert any(k.startswith(f"{ROOT}/segments/") for k in keys), keys
    assert any(k.startswith(f"{ROOT}/channels/") for k in keys), keys
    assert not (server.data_dir / "meta").exists(), "no embedded meta store beside etcd"

    server.crash_restart()
    with server.connect() as conn:
        assert conn.execute("SELECT max(id), count(*) FROM docs").fetchone() == before
        assert conn.execute("SELECT segment_id, state FROM quiver.index_builds ORDER BY 1").fetchall() == builds
        assert conn.execute(query).fetchall() == nearest
        assert conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'docs' ORDER BY 1").fetchall() \
            == [("docs_pkey",), ("docs_v",)]
        # The sequence continues past everything handed out before the crash.
        new_id = conn.execute("INSERT INTO docs (tag, v) VALUES ('new', '[0,0,0,0,0,0,0,0]') RETURNING id").fetchone()[0]
        assert new_id > before[0]
        assert conn.execute("SELECT rolname FROM pg_roles WHERE rolname = 'reader'").fetchone() == ("reader",)

    # etcd itself is killed and restarted on its data directory: Quiver keeps
    # serving from the restarted etcd (and a later Quiver restart finds it all).
    etcd.kill()
    etcd.start()
    server.crash_restart()
    with server.connect() as conn:
        assert conn.execute("SELECT count(*) FROM docs").fetchone() == (before[1] + 1,)
        conn.execute("CREATE TABLE after_etcd_restart (id int PRIMARY KEY)")


def test_etcd_outage_fails_ddl_clearly_and_recovers(etcd, quiver_factory, tmp_path):
    server = quiver_factory(extra_args=["--config", etcd_config(tmp_path, etcd)])
    with server.connect() as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v vector(2))")
        conn.execute("INSERT INTO t VALUES (1, '[1,1]')")
        etcd.kill()
        with pytest.raises(psycopg.Error) as err:
            conn.execute("CREATE TABLE during_outage (id int PRIMARY KEY)")
        assert err.value.sqlstate == "58030", err.value
        assert "etcd" in str(err.value)
        # The session is still usable and committed data is still readable.
        assert conn.execute("SELECT id FROM t").fetchall() == [(1,)]
        etcd.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                conn.execute("CREATE TABLE during_outage (id int PRIMARY KEY)")
                break
            except psycopg.Error:
                assert time.monotonic() < deadline, "DDL did not recover after etcd came back"
                time.sleep(0.5)
        conn.execute("INSERT INTO during_outage VALUES (1)")
        assert conn.execute("SELECT count(*) FROM during_outage").fetchone() == (1,)
    assert server.is_alive()


def test_start_fails_clearly_without_etcd(quiver_factory, tmp_path):
    config = tmp_path / "no-etcd.toml"
    config.write_text(
        f'[storage.meta]\nkind = "etcd"\nendpoints = ["http://127.0.0.1:{free_port()}"]\ntimeout_ms = 1000\n'
    )
    server = quiver_factory(extra_args=["--config", str(config)], start=False)
    result = subprocess.run(server.command(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "etcd" in (result.stdout + result.stderr), result.stderr
