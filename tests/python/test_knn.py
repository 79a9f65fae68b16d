"""Exact kNN correctness against a numpy brute force.

12,000 seeded random 128-d vectors are loaded with batched multi-row INSERTs;
a CHECKPOINT in the middle seals the first half (the server also runs with
--seal-rows 3000 so automatic sealing happens), the rest stays partly growing.
For 20 random queries per metric (<->, <=>, <#>), with and without
`WHERE category = 3`, the server's top-10 ids must equal the brute-force top-10
(ties are accepted when the distances at every rank agree within tolerance).
"""

from __future__ import annotations

import numpy as np
import pytest

N_ROWS = 12_000
DIM = 128
N_CATEGORIES = 10
BATCH = 500
N_QUERIES = 20
K = 10
SEED = 20240611
TABLE = "knn_items"
FILTER_CATEGORY = 3

# Values are multiples of 1/256 within a few units: exactly representable as
# float32, with short exact decimal text, so the server stores exactly the
# numbers numpy uses.
SCALE = 256.0


def quantized_normal(rng: np.random.Generator, shape) -> np.ndarray:
    return np.round(rng.standard_normal(shape) * SCALE) / SCALE


def vec_literal(v: np.ndarray) -> str:
    # repr() of a float64 that is an exact multiple of 1/256 is exact.
    return "[" + ",".join(repr(float(x)) for x in v) + "]"


@pytest.fixture(scope="module")
def dataset():
    rng = np.random.default_rng(SEED)
    vectors = quantized_normal(rng, (N_ROWS, DIM))
    categories = rng.integers(0, N_CATEGORIES, size=N_ROWS)
    ids = np.arange(1, N_ROWS + 1, dtype=np.int64)
    queries = quantized_normal(rng, (N_QUERIES, DIM))
    return ids, categories, vectors, queries


@pytest.fixture(scope="module")
def knn_server(module_quiver_factory, dataset):
    srv = module_quiver_factory(["--seal-rows", "3000"])
    ids, categories, vectors, _ = dataset
    with srv.connect() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(
            f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, category int, "
            f"embedding vector({DIM}))"
        )
        half = N_ROWS // 2
        _load(conn, ids[:half], categories[:half], vectors[:half])
        conn.execute("CHECKPOINT")
        _load(conn, ids[half:], categories[half:], vectors[half:])
    return srv


def _load(conn, ids, categories, vectors):
    for start in range(0, len(ids), BATCH):
        rows = [
            f"({int(i)}, {int(c)}, '{vec_literal(v)}'::vector)"
            for i, c, v in zip(
                ids[start : start + BATCH],
                categories[start : start + BATCH],
                vectors[start : start + BATCH],
            )
        ]
        cur = conn.execute(
            f"INSERT INTO {TABLE} (id, category, embedding) VALUES " + ",".join(rows)
        )
        assert cur.rowcount == len(rows)


def brute_force_distances(metric: str, vectors: np.ndarray, q: np.ndarray) -> np.ndarray:
    if metric == "<->":
        return np.sqrt(((vectors - q) ** 2).sum(axis=1))
    if metric == "<#>":
        return -(vectors @ q)
    if metric == "<=>":
        norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(q)
        return 1.0 - (vectors @ q) / norms
    raise ValueError(metric)


def check_topk(server_ids, metric, ids, vectors, mask, q, context):
    """Compare the server's ranked ids with the brute force (ties allowed)."""
    cand_idx = np.nonzero(mask)[0]
    dists = brute_force_distances(metric, vectors[cand_idx], q)
    order = np.argsort(dists, kind="stable")[:K]
    expected_ids = [int(ids[cand_idx[j]]) for j in order]
    expected_d = [float(dists[j]) for j in order]

    assert len(server_ids) == min(K, len(cand_idx)), f"{context}: got {len(server_ids)} rows"
    if server_ids == expected_ids:
        return

    # Ids differ: accept only if it is explained by (near-)ties, i.e. every
    # returned row is a valid candidate and the distance at each rank matches.
    id_to_pos = {int(ids[j]): j for j in cand_idx}
    assert len(set(server_ids)) == len(server_ids), f"{context}: duplicate ids {server_ids}"
    for sid in server_ids:
        assert sid in id_to_pos, f"{context}: id {sid} is not a candidate (filter violated?)"
    got_d = [
        float(brute_force_distances(metric, vectors[id_to_pos[sid]][None, :], q)[0])
        for sid in server_ids
    ]
    for rank, (g, e) in enumerate(zip(got_d, expected_d)):
        tol = 1e-4 * max(1.0, abs(e))
        assert abs(g - e) <= tol, (
            f"{context}: rank {rank}: server id {server_ids[rank]} at distance {g}, "
            f"expected id {expected_ids[rank]} at distance {e}\n"
            f"server:   {server_ids}\nexpected: {expected_ids}"
        )


def test_row_count(knn_server):
    with knn_server.connect() as conn:
        assert conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == N_ROWS
        cnt3 = conn.execute(
            f"SELECT count(*) FROM {TABLE} WHERE category = {FILTER_CATEGORY}"
        ).fetchone()[0]
        assert cnt3 > K


def test_checkpoint_wrote_parquet(knn_server):
    files = knn_server.parquet_files()
    assert files, f"no .parquet files under {knn_server.objects_dir} after CHECKPOINT"


def test_vectors_roundtrip(knn_server, dataset):
    ids, _, vectors, _ = dataset
    with knn_server.connect() as conn:
        for i in (1, N_ROWS // 2, N_ROWS // 2 + 1, N_ROWS):
            text = conn.execute(
                f"SELECT embedding::text FROM {TABLE} WHERE id = {i}"
            ).fetchone()[0]
            # pgvector prints the shortest text that round-trips as float32.
            got = np.array([float(x) for x in text.strip("[]").split(",")], dtype=np.float32)
            np.testing.assert_array_equal(got, vectors[i - 1].astype(np.float32))


@pytest.mark.parametrize("metric", ["<->", "<=>", "<#>"])
@pytest.mark.parametrize("filtered", [False, True], ids=["all", "category3"])
def test_knn_matches_brute_force(knn_server, dataset, metric, filtered):
    ids, categories, vectors, queries = dataset
    mask = categories == FILTER_CATEGORY if filtered else np.ones(len(ids), dtype=bool)
    where = f"WHERE category = {FILTER_CATEGORY} " if filtered else ""
    with knn_server.connect() as conn:
        for qi, q in enumerate(queries):
            sql = (
                f"SELECT id, category FROM {TABLE} {where}"
                f"ORDER BY embedding {metric} '{vec_literal(q)}'::vector LIMIT {K}"
            )
            rows = conn.execute(sql).fetchall()
            if filtered:
                assert all(int(c) == FILTER_CATEGORY for _, c in rows), rows
            check_topk(
                [int(r[0]) for r in rows],
                metric,
                ids,
                vectors,
                mask,
                q,
                context=f"metric {metric} filtered={filtered} query #{qi}",
            )


def test_knn_distance_values(knn_server, dataset):
    """The distance the server reports matches numpy for the top hits."""
    ids, _, vectors, queries = dataset
    q = queries[0]
    with knn_server.connect() as conn:
        for metric in ("<->", "<=>", "<#>"):
            rows = conn.execute(
                f"SELECT id, embedding {metric} '{vec_literal(q)}'::vector AS d "
                f"FROM {TABLE} ORDER BY d LIMIT {K}"
            ).fetchall()
            assert len(rows) == K
            for rid, d in rows:
                exp = float(brute_force_distances(metric, vectors[int(rid) - 1][None, :], q)[0])
                assert abs(float(d) - exp) <= 1e-4 * max(1.0, abs(exp)), (metric, rid, d, exp)


def test_knn_after_deletes(knn_server, dataset):
    """Deleted rows (sealed and growing) never come back from kNN. Runs last:
    it modifies the shared table."""
    ids, categories, vectors, queries = dataset
    rng = np.random.default_rng(SEED + 1)
    mask = np.ones(len(ids), dtype=bool)
    with knn_server.connect() as conn:
        # Delete the current true top-3 of a few queries so that results must change.
        to_delete: set[int] = set()
        for q in queries[:5]:
            d = brute_force_distances("<->", vectors, q)
            to_delete.update(int(ids[j]) for j in np.argsort(d, kind="stable")[:3])
        to_delete.update(int(x) for x in rng.choice(ids, size=50, replace=False))
        id_list = ",".join(str(i) for i in sorted(to_delete))
        cur = conn.execute(f"DELETE FROM {TABLE} WHERE id IN ({id_list})")
        assert cur.rowcount == len(to_delete)
        for i in to_delete:
            mask[i - 1] = False
        assert conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == mask.sum()
        for qi, q in enumerate(queries[:10]):
            rows = conn.execute(
                f"SELECT id FROM {TABLE} ORDER BY embedding <-> '{vec_literal(q)}'::vector "
                f"LIMIT {K}"
            ).fetchall()
            got = [int(r[0]) for r in rows]
            assert not (set(got) & to_delete), f"deleted ids returned: {set(got) & to_delete}"
            check_topk(got, "<->", ids, vectors, mask, q, context=f"after delete, query #{qi}")
