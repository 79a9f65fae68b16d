"""Segments and index files on a real S3-compatible server (s3s-fs,
installed by scripts/ci-deps.sh into ~/.cache/quiver-services): standalone
Quiver with `[storage.object] kind = "s3"` seals Parquet segments and
DiskANN index files into the bucket, serves exact and indexed k-NN from
them, and after kill -9 with its local index cache deleted re-fetches
everything from the bucket without rebuilding."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import wait_for_index_builds
from services import S3Server


@pytest.fixture
def s3(tmp_path):
    server = S3Server(tmp_path).start()
    yield server
    server.stop()


def knn(conn, q, k=10):
    literal = "[" + ",".join(f"{x:.6f}" for x in q) + "]"
    return [r[0] for r in conn.execute(
        f"SELECT id FROM s3_items ORDER BY v <-> '{literal}' LIMIT {k}").fetchall()]


def test_segments_and_indexes_live_in_the_bucket(s3, quiver_factory, tmp_path):
    bucket = s3.bucket_dir
    config = tmp_path / "s3.toml"
    config.write_text(s3.config_toml())
    server = quiver_factory(extra_args=["--config", str(config)])
    rng = np.random.default_rng(5)
    data = rng.standard_normal((4000, 16)).astype(np.float32)
    queries = rng.standard_normal((5, 16)).astype(np.float32)
    exact = [list(np.argsort(((data - q) ** 2).sum(axis=1))[:10]) for q in queries]
    with server.connect() as conn:
        conn.execute("CREATE TABLE s3_items (id bigint PRIMARY KEY, v vector(16))")
        with conn.cursor().copy("COPY s3_items (id, v) FROM STDIN") as copy:
            for i, row in enumerate(data):
                copy.write_row((i, "[" + ",".join(f"{x:.6f}" for x in row) + "]"))
        conn.execute("CHECKPOINT")
        parquet = list(bucket.rglob("*.parquet"))
        assert parquet, "sealed segments must be in the bucket"
        assert not (server.data_dir / "objects").exists() or not list((server.data_dir / "objects").rglob("*.parquet"))
        assert [knn(conn, q) for q in queries] == exact  # exact search over S3 segments
        conn.execute("CREATE INDEX ON s3_items USING diskann (v)")
        wait_for_index_builds(conn)
        builds = conn.execute("SELECT segment_id, state FROM quiver.index_builds ORDER BY segment_id").fetchall()
        assert builds and all(state == "done" for _, state in builds)
        conn.execute("SET diskann.search_list = 200")
        indexed = [knn(conn, q) for q in queries]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(indexed, exact)])
    assert recall >= 0.95
    index_files = [p for p in bucket.rglob("*") if p.is_file() and p.suffix != ".parquet"]
    assert index_files, "index files must be in the bucket"
    # kill -9 and lose the local caches: everything comes back from the bucket.
    server.kill()
    for cache in ("index-cache", "vector-cache"):
        shutil.rmtree(server.data_dir / cache, ignore_errors=True)
    server.start()
    with server.connect() as conn:
        assert conn.execute("SELECT count(*) FROM s3_items").fetchone() == (4000,)
        assert conn.execute("SELECT segment_id, state FROM quiver.index_builds ORDER BY segment_id").fetchall() == builds
        conn.execute("SET diskann.search_list = 200")
        assert [knn(conn, q) for q in queries] == indexed
