#!/usr/bin/env python3
"""Approximate vector search: Quiver's DiskANN index against PostgreSQL +
pgvector HNSW on the same machine.

For each system it:
  1. loads the same N x D embedding-like vectors (default 100,000 x 384,
     clustered synthetic data, L2-normalised) with binary COPY;
  2. builds the index (Quiver: `USING diskann` after `CHECKPOINT` and `VACUUM` sealed every
     segment; pgvector: `USING hnsw ... WITH (m = 16, ef_construction = 64)`)
     and reports load time, build time and index size;
  3. sweeps the search knob (`diskann.search_list` / `hnsw.ef_search`) and
     runs Q top-10 queries (`ORDER BY embedding <-> q LIMIT 10`) over 1 and
     8 connections: recall@10 against exact numpy ground truth, QPS, p50 and
     p99 latency;
  4. reports memory: Quiver's server RSS while serving (after a restart, so
     the load phase does not inflate it) and PostgreSQL's backend memory and
     relation sizes;
  5. summarises the best QPS at recall@10 >= 0.95 per system.

PostgreSQL comes from the PyPI package `pgserver` (PostgreSQL 16 with
pgvector bundled): `.venv/bin/pip install pgserver`. It runs as the OS user
`postgres` (created if missing), because PostgreSQL refuses to run as root.

Usage:
  .venv/bin/python bench/vector_search.py [--rows N] [--dim D] [--queries Q]
      [--sweep 10,20,40,64,100,200] [--conns 1,8] [--seal-rows S]
      [--skip-pg] [--skip-quiver] [--json out.json] [--keep]
  QUIVER_BIN=... picks the server binary (or --quiver-bin).

It is a benchmark, not a test: it prints figures and never fails on them. It
exits non-zero only if a system could not be benchmarked at all (the other
system's figures are still printed).
"""
import argparse
import importlib.util
import json
import os
import platform
import re
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import numpy as np
import psycopg

# Shared with the ingest benchmark (same directory): port picking and
# pgvector's binary COPY layout.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest_knn import binary_copy_payload, free_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 10
# The query vector goes as a text parameter ('[...]'), typed by the server.
# No `::vector` cast: Quiver (as of this commit) plans `embedding <-> $1::vector`
# as an exact scan, not an index search; pgvector accepts both forms.
QUERY_SQL = f"SELECT id FROM items ORDER BY embedding <-> %s LIMIT {K}"
DATA_VERSION = 2  # bump when the generator changes, so caches are not reused


# --------------------------------------------------------------------------
# helpers


class BenchError(Exception):
    """A failure with a message clear enough to print without a traceback."""


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def vec_text(v):
    return "[" + ",".join(f"{x:.7g}" for x in v) + "]"


def connect(port, **kw):
    return psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=10",
                           autocommit=True, **kw)


def wait_for_port(port, proc, timeout, what, log_path=None):
    """Waits until something accepts on 127.0.0.1:port; fails early if proc exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} while starting"
                             + log_tail(log_path))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{what} did not accept connections on port {port} within {timeout}s" + log_tail(log_path))


def log_tail(path, lines=20):
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        tail = f.readlines()[-lines:]
    return f"\n--- last lines of {path} ---\n" + "".join(tail)


def proc_status(pid, *fields):
    """Fields of /proc/PID/status in bytes (kB values), None if gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in fields:
                    out[name] = int(rest.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return out


def children_of(pid):
    """PIDs whose parent is pid (PostgreSQL backends of a postmaster)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may contain spaces; fields after ')' are fixed
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


class MemorySampler:
    """Samples a memory figure every `interval` seconds in the background and
    keeps the peak; `sample()` returns a dict of named byte counts."""

    def __init__(self, sample, interval=0.1):
        self.sample_fn = sample
        self.interval = interval
        self.peak = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _take(self):
        try:
            s = self.sample_fn()
        except Exception:  # a process vanished mid-read: skip this sample
            return
        for k, v in (s or {}).items():
            if v is not None and v > self.peak.get(k, 0):
                self.peak[k] = v

    def _run(self):
        while not self._stop.is_set():
            self._take()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self._take()


def fmt_bytes(n):
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def dir_bytes(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_size
            except OSError:
                pass
    return total


# --------------------------------------------------------------------------
# data


def generate(n, dim, seed, stream, centres, bases):
    """n points: centre + low-rank latent spread + isotropic noise, normalised.

    `centres` (C x D) and `bases` (C x R x D) are shared by data and queries;
    `stream` separates the data's random stream from the queries'."""
    rng = np.random.default_rng([seed, stream])
    c, r, _ = bases.shape
    out = np.empty((n, dim), dtype=np.float32)
    step = 20_000
    for s in range(0, n, step):
        e = min(n, s + step)
        which = rng.integers(0, c, size=e - s)
        z = rng.standard_normal((e - s, r), dtype=np.float32)
        # latent spread of norm ~0.8 and noise of norm ~0.3 around unit-norm
        # centres. At 100k x 384 this gives a local intrinsic dimensionality
        # of ~24 and a nearest-neighbour cosine of ~0.8, in the range of
        # real sentence embeddings (rank 16 / 0.6 / 0.25 made it too easy).
        spread = np.einsum("nr,nrd->nd", z, bases[which]) * (0.8 / np.sqrt(r))
        noise = rng.standard_normal((e - s, dim), dtype=np.float32) * (0.3 / np.sqrt(dim))
        x = centres[which] + spread + noise
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:e] = x
    return out


def ground_truth(data, queries, k=K, batch=100):
    """Exact top-k by L2 distance: float32 matrix products to shortlist
    k + 30 candidates, then re-ranked in float64."""
    norms = np.einsum("ij,ij->i", data, data)
    extra = min(len(data), k + 30)
    gt = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), batch):
        q = queries[s:s + batch]
        d = norms[None, :] - 2.0 * (q @ data.T)
        cand = np.argpartition(d, extra - 1, axis=1)[:, :extra]
        for i in range(len(q)):
            c = cand[i]
            exact = ((data[c].astype(np.float64) - q[i].astype(np.float64)) ** 2).sum(axis=1)
            gt[s + i] = c[np.argsort(exact, kind="stable")[:k]]
    return gt


def load_data(args):
    """(data, queries, ground truth), generated once and cached as .npy."""
    os.makedirs(args.cache_dir, exist_ok=True)
    tag = f"v{DATA_VERSION}-seed{args.seed}-d{args.dim}"
    paths = {
        "data": os.path.join(args.cache_dir, f"data-{tag}-n{args.rows}.npy"),
        "queries": os.path.join(args.cache_dir, f"queries-{tag}-q{args.queries}.npy"),
        "gt": os.path.join(args.cache_dir, f"gt-{tag}-n{args.rows}-q{args.queries}-k{K}.npy"),
    }
    if all(os.path.exists(p) for p in paths.values()):
        log(f"using cached data in {args.cache_dir}")
        return tuple(np.load(paths[k]) for k in ("data", "queries", "gt"))
    t = time.perf_counter()
    rng = np.random.default_rng([args.seed, 0])
    n_centres, rank = 100, 32
    centres = rng.standard_normal((n_centres, args.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.standard_normal((n_centres, rank, args.dim), dtype=np.float32) / np.sqrt(args.dim)
    data = generate(args.rows, args.dim, args.seed, 1, centres, bases)
    queries = generate(args.queries, args.dim, args.seed, 2, centres, bases)
    log(f"generated {args.rows} x {args.dim} data and {args.queries} queries in {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    gt = ground_truth(data, queries)
    log(f"exact top-{K} ground truth in {time.perf_counter() - t:.1f}s")
    for key, arr in (("data", data), ("queries", queries), ("gt", gt)):
        tmp = paths[key] + f".tmp{os.getpid()}.npy"
        np.save(tmp, arr)
        os.replace(tmp, paths[key])
    return data, queries, gt


def copy_load(port, payloads, dim):
    """Creates `items` and loads it with one binary COPY per chunk over one
    connection; returns seconds."""
    with connect(port) as c:
        c.execute("DROP TABLE IF EXISTS items")
        c.execute(f"CREATE TABLE items (id bigint PRIMARY KEY, embedding vector({dim}))")
        t = time.perf_counter()
        for p in payloads:
            with c.cursor().copy("COPY items (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as cp:
                cp.write(p)
        return time.perf_counter() - t


# --------------------------------------------------------------------------
# search


def run_queries(port, setup_sql, texts, conns, timeout, warmup=0):
    """Runs the top-10 query for every literal in `texts`, spread over `conns`
    connections (each a thread that first runs `setup_sql`). Returns
    (ids per query, latencies in s, wall seconds). Connection setup is not
    timed; a phase that exceeds `timeout` is cancelled and raises."""
    sql = QUERY_SQL
    results = [None] * len(texts)
    lat = [None] * len(texts)
    errors = []
    spans = []
    lock = threading.Lock()
    barrier = threading.Barrier(conns)
    open_conns = []

    def worker(idx):
        try:
            with connect(port) as c:
                with lock:
                    open_conns.append(c)
                for s in setup_sql:
                    c.execute(s)
                for k in range(idx, min(warmup, len(texts)), conns):
                    c.execute(sql, (texts[k],)).fetchall()
                barrier.wait(timeout=60)
                t0 = time.perf_counter()
                for k in range(idx, len(texts), conns):
                    t = time.perf_counter()
                    rows = c.execute(sql, (texts[k],)).fetchall()
                    lat[k] = time.perf_counter() - t
                    results[k] = [r[0] for r in rows]
                with lock:
                    spans.append((t0, time.perf_counter()))
        except Exception as e:  # reported by the caller
            barrier.abort()
            with lock:
                errors.append(f"{type(e).__name__}: {e}".strip())

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(conns)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        for c in list(open_conns):
            try:
                c.cancel_safe(timeout=5)
            except Exception:
                pass
        for t in threads:
            t.join(timeout=10)
        raise BenchError(f"queries over {conns} connection(s) did not finish within {timeout}s (cancelled)")
    if errors:
        raise BenchError(f"query failed: {errors[0]}")
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    return results, [x for x in lat if x is not None], wall


def recall_at_k(results, gt):
    hits = 0
    short = 0
    for got, want in zip(results, gt):
        if len(got) < K:
            short += 1
        hits += len(set(got[:K]) & set(want.tolist()))
    return hits / (K * len(gt)), short


def percentile_ms(lat, p):
    s = sorted(lat)
    return s[min(len(s) - 1, int(len(s) * p))] * 1000


def sweep(name, port, knob, values, conns_list, texts, gt, timeout, sampler_fn, setup=()):
    """The search sweep; returns rows of figures and the sampled memory peak."""
    rows = []
    log(f"{name}: warm-up ({min(50, len(texts))} queries)")
    run_queries(port, list(setup) + [f"SET {knob} = {values[0]}"], texts[:50], 1, timeout)
    with MemorySampler(sampler_fn) as mem:
        for v in values:
            for conns in conns_list:
                results, lat, wall = run_queries(port, list(setup) + [f"SET {knob} = {v}"], texts, conns, timeout)
                recall, short = recall_at_k(results, gt)
                row = {"setting": v, "conns": conns, "recall": recall, "qps": len(texts) / wall,
                       "p50_ms": percentile_ms(lat, 0.50), "p99_ms": percentile_ms(lat, 0.99),
                       "short_results": short}
                rows.append(row)
                log(f"{name}: {knob}={v:<4} conns={conns}: recall@{K} {recall:.4f}, {row['qps']:.0f} QPS, "
                    f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms"
                    + (f", {short} queries returned < {K} rows" if short else ""))
    return rows, mem.peak


def explain(port, setup, text, analyze=False):
    try:
        with connect(port) as c:
            for s in setup:
                c.execute(s)
            plan = c.execute(("EXPLAIN ANALYZE " if analyze else "EXPLAIN ") + QUERY_SQL, (text,)).fetchall()
        text = "\n".join(" | ".join(str(x) for x in r) for r in plan)
        return re.sub(r"\[[-0-9.,e ]{60,}\]", "[...]", text)  # elide the query vector
    except Exception as e:
        return f"(EXPLAIN failed: {e})"


# --------------------------------------------------------------------------
# Quiver


class QuiverServer:
    def __init__(self, binary, data_dir, seal_rows, log_path, config=None):
        self.binary, self.data_dir, self.seal_rows, self.log_path = binary, data_dir, seal_rows, log_path
        self.config = config
        self.proc = None
        self.port = None

    def start(self, timeout=60):
        self.port = free_port()
        logf = open(self.log_path, "ab")
        cmd = [self.binary, "standalone", "--data-dir", self.data_dir, "--listen", f"127.0.0.1:{self.port}",
               "--seal-rows", str(self.seal_rows)]
        if self.config:
            cmd += ["--config", self.config]
        log(f"quiver: starting {' '.join(cmd)}")
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        logf.close()
        wait_for_port(self.port, self.proc, timeout, "quiver server", self.log_path)
        # the port accepts before the engine may be ready: wait for a query
        deadline = time.monotonic() + timeout
        while True:
            try:
                with connect(self.port) as c:
                    c.execute("SELECT 1").fetchall()
                return
            except psycopg.Error as e:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise BenchError(f"quiver server does not answer queries: {e}" + log_tail(self.log_path))
                time.sleep(0.2)

    def stop(self, timeout=60):
        """SIGTERM, then SIGKILL after `timeout`; only our own PID."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"quiver: pid {self.proc.pid} did not exit {timeout}s after SIGTERM; killing it")
            self.proc.kill()
            self.proc.wait(timeout=30)
        return self.proc.returncode


def wait_builds(port, timeout):
    """Waits until no index build is queued or running; returns the rows of
    quiver.index_builds."""
    deadline = time.monotonic() + timeout
    last = None
    with connect(port) as c:
        while True:
            pending = c.execute(
                "SELECT count(*) FROM quiver.index_builds WHERE state IN ('queued','running')").fetchone()[0]
            if pending == 0:
                break
            if pending != last:
                log(f"quiver: {pending} index build(s) queued or running")
                last = pending
            if time.monotonic() > deadline:
                raise BenchError(f"index builds not done after {timeout}s ({pending} queued or running)")
            time.sleep(0.25)
        cur = c.execute("SELECT index_name, segment_id, rows, state, duration_ms, bytes, error "
                        "FROM quiver.index_builds")
        names = [d.name for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


def segments(port):
    with connect(port) as c:
        cur = c.execute("SELECT shard, segment_id, state, rows, deleted_rows, bytes, index_state FROM quiver.segments")
        names = [d.name for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


def bench_quiver(args, data, texts, gt, payloads, tmp_root, out):
    binary = args.quiver_bin
    if not os.path.exists(binary):
        raise BenchError(f"quiver binary {binary} not found (set QUIVER_BIN or --quiver-bin)")
    out["binary"] = binary
    data_dir = os.path.join(tmp_root, "quiver-data")
    os.makedirs(data_dir)
    server = QuiverServer(binary, data_dir, args.seal_rows, os.path.join(tmp_root, "quiver.log"),
                          args.quiver_config)
    try:
        server.start()
        log(f"quiver: loading {args.rows} rows with binary COPY ({len(payloads)} COPYs)")
        out["copy_s"] = copy_load(server.port, payloads, args.dim)
        t = time.perf_counter()
        with connect(server.port) as c:
            c.execute("CHECKPOINT")
            # COPYs of at least direct_seal_rows rows are sealed as they
            # commit, a segment per shard each; merge the small ones now
            # rather than in the background mid-sweep (PostgreSQL gets its
            # VACUUM ANALYZE too).
            c.execute("VACUUM items")
        out["checkpoint_s"] = time.perf_counter() - t
        out["load_s"] = out["copy_s"] + out["checkpoint_s"]
        with connect(server.port) as c:
            n = c.execute("SELECT count(*) FROM items").fetchone()[0]
        out["rows_loaded"] = n
        if n != args.rows:
            log(f"quiver: WARNING: count(*) = {n}, expected {args.rows}")
        log(f"quiver: COPY {out['copy_s']:.1f}s + CHECKPOINT and VACUUM {out['checkpoint_s']:.1f}s "
            f"= {args.rows / out['load_s']:,.0f} rows/s")

        with_opts = f" WITH ({args.diskann_options})" if args.diskann_options else ""
        log(f"quiver: CREATE INDEX ... USING diskann (embedding vector_l2_ops){with_opts}")
        t = time.perf_counter()
        with connect(server.port) as c:
            try:
                c.execute(f"CREATE INDEX ON items USING diskann (embedding vector_l2_ops){with_opts}")
            except psycopg.errors.FeatureNotSupported as e:
                raise BenchError(f"{binary} rejects CREATE INDEX ({e}); it predates DiskANN indexes: "
                                 "rebuild it or point QUIVER_BIN / --quiver-bin at a newer build")
        builds = wait_builds(server.port, args.build_timeout)
        out["build_s"] = time.perf_counter() - t
        out["build_sum_duration_ms"] = sum(b["duration_ms"] or 0 for b in builds)
        out["index_bytes"] = sum(b["bytes"] or 0 for b in builds)
        out["builds"] = builds
        states = {}
        for b in builds:
            states[b["state"]] = states.get(b["state"], 0) + 1
        out["build_states"] = states
        failed = [b for b in builds if b["state"] == "failed"]
        if failed:
            log(f"quiver: WARNING: {len(failed)} index build(s) failed, first error: {failed[0]['error']}")
        segs = segments(server.port)
        out["segments"] = segs
        log(f"quiver: index built in {out['build_s']:.1f}s (sum of build durations "
            f"{out['build_sum_duration_ms'] / 1000:.1f}s), {len(builds)} builds {states}, "
            f"index {fmt_bytes(out['index_bytes'])}, {len(segs)} segments")
        hwm = proc_status(server.proc.pid, "VmHWM", "VmRSS") or {}
        out["load_vmhwm"] = hwm.get("VmHWM")
        out["load_end_rss"] = hwm.get("VmRSS")

        if not args.no_restart:
            log("quiver: restarting the server so serving memory excludes the load phase")
            rc = server.stop()
            if rc not in (0, -signal.SIGTERM):
                log(f"quiver: WARNING: server exited with status {rc} on SIGTERM")
            server.start()
            with connect(server.port) as c:
                n = c.execute("SELECT count(*) FROM items").fetchone()[0]
            if n != args.rows:
                log(f"quiver: WARNING: after restart count(*) = {n}, expected {args.rows}")
            out["rows_after_restart"] = n
        out["restarted"] = not args.no_restart
        out["plan"] = explain(server.port, [f"SET diskann.search_list = {args.sweep[0]}"], texts[0])
        out["uses_index"] = "index=diskann" in out["plan"]
        if not out["uses_index"]:
            log(f"quiver: WARNING: the plan does not search the diskann index:\n{out['plan']}")
        # which strategy each segment used at the widest search list (a
        # segment too small for the list is searched exactly instead)
        plan = explain(server.port, [f"SET diskann.search_list = {max(args.sweep)}"], texts[0], analyze=True)
        m = re.search(r"VectorSearch:.*metrics=\[([^\]]*)\]", plan)
        out["segment_strategies_at_max_search_list"] = m.group(1) if m else plan
        if m and not re.search(r"segments_exact=0\b", m.group(1)):
            log(f"quiver: WARNING: some segments are searched exactly at search_list={max(args.sweep)}: {m.group(1)}")
        pid = server.proc.pid
        out["sweep"], peak = sweep("quiver", server.port, "diskann.search_list", args.sweep, args.conns,
                                   texts, gt, args.query_timeout,
                                   lambda: proc_status(pid, "VmRSS", "RssAnon", "RssFile"))
        out["serving_peak_rss"] = peak.get("VmRSS")
        # Private memory versus pages of the mapped binary and files (which
        # the kernel can drop and re-read).
        out["serving_peak_rss_anon"] = peak.get("RssAnon")
        out["serving_peak_rss_file"] = peak.get("RssFile")
        st = proc_status(pid, "VmHWM") or {}
        out["serving_vmhwm"] = st.get("VmHWM")
        out["data_dir_bytes"] = dir_bytes(data_dir)
    finally:
        crashed = server.proc is not None and server.proc.poll() is not None
        if crashed:
            out["server_exit_status"] = server.proc.returncode
            log(f"quiver: the server had exited (status {server.proc.returncode}) before the end"
                + log_tail(server.log_path))
        rc = server.stop()
        if rc not in (None, 0, -signal.SIGTERM):
            log(f"quiver: server exited with status {rc} on SIGTERM")
        if os.path.exists(server.log_path):
            with open(server.log_path, errors="replace") as f:
                plain = [re.sub(r"\x1b\[[0-9;]*m", "", l).strip() for l in f]
            panics = [l for l in plain if "panicked" in l or re.search(r"Z\s+ERROR\b", l)]
            if panics:
                out["server_log_errors"] = panics[:20]
                log(f"quiver: server log has {len(panics)} ERROR/panic line(s), first: {panics[0]}")


# --------------------------------------------------------------------------
# PostgreSQL + pgvector (pgserver's bundled build)


def pg_bin_dir(args):
    if args.pg_bin_dir:
        if not os.path.exists(os.path.join(args.pg_bin_dir, "postgres")):
            raise BenchError(f"--pg-bin-dir {args.pg_bin_dir} has no postgres binary")
        return args.pg_bin_dir
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("the PyPI package 'pgserver' is not installed in this Python "
                         f"({sys.executable}); install it with `{sys.executable} -m pip install pgserver` "
                         "or pass --pg-bin-dir")
    d = os.path.join(list(spec.submodule_search_locations)[0], "pginstall", "bin")
    if not os.path.exists(os.path.join(d, "postgres")):
        raise BenchError(f"pgserver is installed but {d}/postgres is missing")
    return d


def ensure_os_user(name="postgres"):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    if os.geteuid() != 0:
        raise BenchError(f"OS user {name!r} does not exist and this is not root, so it cannot be created")
    r = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", name],
                       capture_output=True, text=True)
    if r.returncode not in (0, 9):  # 9: already exists (raced)
        raise BenchError(f"useradd {name} failed: {r.stderr.strip()}")
    return pwd.getpwnam(name)


def as_postgres(cmd, timeout, env=None):
    """Runs cmd as the postgres OS user (as is when not root)."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd="/")
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(cmd)} timed out after {timeout}s")
    if r.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed with status {r.returncode}:\n{r.stdout}{r.stderr}")
    return r.stdout


class PgServer:
    def __init__(self, bindir, root):
        self.bindir = bindir
        self.root = root  # owned by postgres
        self.pgdata = os.path.join(root, "pgdata")
        self.log_path = os.path.join(root, "postgres.log")
        self.port = None
        self.pid = None
        self.started = False

    def bin(self, name):
        return os.path.join(self.bindir, name)

    def start(self, settings):
        user = ensure_os_user()
        os.chown(self.root, user.pw_uid, user.pw_gid)
        self.port = free_port()
        as_postgres([self.bin("initdb"), "-D", self.pgdata, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                     "--no-sync", "--no-instructions"], timeout=300)
        conf = dict(settings)
        conf.update({"port": str(self.port), "listen_addresses": "'127.0.0.1'",
                     "unix_socket_directories": f"'{self.root}'"})
        # appended as root; the file stays owned by postgres
        with open(os.path.join(self.pgdata, "postgresql.conf"), "a") as f:
            f.write("\n# bench/vector_search.py\n")
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        self.started = True
        as_postgres([self.bin("pg_ctl"), "-D", self.pgdata, "-l", self.log_path, "-w", "-t", "120", "start"],
                    timeout=180)
        with open(os.path.join(self.pgdata, "postmaster.pid")) as f:
            self.pid = int(f.readline())
        wait_for_port(self.port, None, 30, "postgres", self.log_path)

    def stop(self):
        if not self.started:
            return
        self.started = False
        try:
            as_postgres([self.bin("pg_ctl"), "-D", self.pgdata, "-m", "fast", "-w", "-t", "60", "stop"], timeout=90)
        except BenchError as e:
            log(f"postgres: pg_ctl stop failed ({e}); sending SIGQUIT to postmaster {self.pid}")
            if self.pid:
                try:
                    os.kill(self.pid, signal.SIGQUIT)
                except ProcessLookupError:
                    pass

    def memory(self):
        """RssAnon summed over the postmaster and its children (backends and
        background processes), and the largest RssShmem of any of them.

        Summing VmRSS over PostgreSQL processes counts shared_buffers once
        per process that touched them, so it overstates memory badly.
        RssAnon is each process's private memory (query state, the HNSW
        search's visited sets, the relcache...), so its sum is the real
        private footprint; shared memory in use is at most shared_buffers,
        and the largest RssShmem of one process is a lower bound of the
        shared pages touched."""
        pids = [self.pid] + children_of(self.pid)
        anon, shmem = 0, 0
        for p in pids:
            s = proc_status(p, "RssAnon", "RssShmem")
            if s:
                anon += s.get("RssAnon", 0)
                shmem = max(shmem, s.get("RssShmem", 0))
        return {"rss_anon_sum": anon, "rss_shmem_max": shmem}


def bench_pg(args, data, texts, gt, payloads, tmp_root, out):
    bindir = pg_bin_dir(args)
    version = subprocess.run([os.path.join(bindir, "postgres"), "--version"], capture_output=True,
                             text=True).stdout.strip()
    out["postgres_binary"] = os.path.join(bindir, "postgres")
    root = os.path.join(tmp_root, "pg")
    os.makedirs(root)
    os.chmod(tmp_root, 0o755)  # the postgres user must reach its directory
    pg = PgServer(bindir, root)
    settings = {
        "shared_buffers": "'2GB'",
        "maintenance_work_mem": "'2GB'",
        "max_parallel_maintenance_workers": "1",
        "max_parallel_workers_per_gather": "0",
        "work_mem": "'64MB'",
        "effective_cache_size": "'8GB'",
        "max_wal_size": "'8GB'",
        "max_connections": "50",
        "jit": "off",
    }
    out["settings"] = {k: v.strip("'") for k, v in settings.items()}
    try:
        log(f"postgres: initdb + start ({version}, {bindir})")
        pg.start(settings)
        with connect(pg.port) as c:
            c.execute("CREATE EXTENSION IF NOT EXISTS vector")
            out["server_version"] = c.execute("SHOW server_version").fetchone()[0]
            out["pgvector_version"] = c.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        log(f"postgres: PostgreSQL {out['server_version']}, pgvector {out['pgvector_version']}, port {pg.port}")
        log(f"postgres: loading {args.rows} rows with binary COPY ({len(payloads)} COPYs)")
        out["copy_s"] = copy_load(pg.port, payloads, args.dim)
        t = time.perf_counter()
        with connect(pg.port) as c:
            c.execute("VACUUM ANALYZE items")
        out["vacuum_analyze_s"] = time.perf_counter() - t
        out["load_s"] = out["copy_s"]
        log(f"postgres: COPY {out['copy_s']:.1f}s = {args.rows / out['copy_s']:,.0f} rows/s "
            f"(+ VACUUM ANALYZE {out['vacuum_analyze_s']:.1f}s)")
        idx_sql = (f"CREATE INDEX items_embedding_idx ON items USING hnsw (embedding vector_l2_ops) "
                   f"WITH (m = {args.hnsw_m}, ef_construction = {args.hnsw_ef_construction})")
        log(f"postgres: {idx_sql}")
        t = time.perf_counter()
        with connect(pg.port) as c:
            c.execute(f"SET statement_timeout = '{int(args.build_timeout)}s'")
            c.execute(idx_sql)
        out["build_s"] = time.perf_counter() - t
        with connect(pg.port) as c:
            out["index_bytes"] = c.execute("SELECT pg_relation_size('items_embedding_idx')").fetchone()[0]
            out["table_bytes"] = c.execute("SELECT pg_table_size('items')").fetchone()[0]
            out["total_relation_bytes"] = c.execute("SELECT pg_total_relation_size('items')").fetchone()[0]
        log(f"postgres: index built in {out['build_s']:.1f}s, index {fmt_bytes(out['index_bytes'])}, "
            f"table {fmt_bytes(out['table_bytes'])}")
        timeout_sql = f"SET statement_timeout = '{int(args.query_timeout)}s'"
        out["plan"] = explain(pg.port, [f"SET hnsw.ef_search = {args.sweep[0]}"], texts[0])
        out["uses_index"] = "items_embedding_idx" in out["plan"]
        if not out["uses_index"]:
            log(f"postgres: WARNING: the plan does not use the HNSW index:\n{out['plan']}")
        out["sweep"], peak = sweep("pgvector", pg.port, "hnsw.ef_search", args.sweep, args.conns, texts, gt,
                                   args.query_timeout, pg.memory, setup=[timeout_sql])
        out["serving_rss_anon_sum_peak"] = peak.get("rss_anon_sum")
        out["serving_rss_shmem_max_peak"] = peak.get("rss_shmem_max")
        out["data_dir_bytes"] = dir_bytes(pg.pgdata)
    finally:
        pg.stop()


# --------------------------------------------------------------------------
# report


def best_at(rows, conns, target):
    ok = [r for r in rows if r["conns"] == conns and r["recall"] >= target]
    return max(ok, key=lambda r: r["qps"]) if ok else None


def print_report(args, res):
    raw = args.rows * args.dim * 4
    print()
    print(f"=== vector search: {args.rows:,} x {args.dim}-d clustered vectors, {args.queries} queries, top-{K}, "
          f"L2 ({platform.node()}, {os.cpu_count()} CPUs; client and servers share them) ===")
    print(f"raw vector bytes (N*D*4): {fmt_bytes(raw)}")
    for key, label in (("quiver", "Quiver (diskann)"), ("pg", "PostgreSQL + pgvector (hnsw)")):
        r = res.get(key)
        if r is None:
            continue
        print(f"\n--- {label} ---")
        if "error" in r:
            print(f"FAILED: {r['error']}")
        if key == "quiver" and "binary" in r:
            print(f"binary: {r['binary']}, seal rows {args.seal_rows}")
        if key == "pg" and "server_version" in r:
            print(f"PostgreSQL {r['server_version']}, pgvector {r['pgvector_version']} "
                  f"(pgserver; {r['postgres_binary']})")
        if "load_s" in r:
            extra = (f" (COPY {r['copy_s']:.1f}s + CHECKPOINT and VACUUM {r['checkpoint_s']:.1f}s)" if key == "quiver"
                     else f" (then VACUUM ANALYZE {r['vacuum_analyze_s']:.1f}s, not counted)")
            print(f"load: {r['load_s']:.1f}s = {args.rows / r['load_s']:,.0f} rows/s{extra}")
        if "build_s" in r:
            line = f"index build: {r['build_s']:.1f}s, index size {fmt_bytes(r['index_bytes'])}"
            if key == "quiver":
                line += (f" (sum of per-segment build durations {r['build_sum_duration_ms'] / 1000:.1f}s; "
                         f"{len(r['builds'])} builds: {r['build_states']}; {len(r['segments'])} segments)")
            else:
                line += f", table {fmt_bytes(r['table_bytes'])}"
            print(line)
        if "plan" in r:
            print("plan: " + r["plan"].replace("\n", "\n      "))
            if not r.get("uses_index"):
                print("WARNING: the plan does not use the index; the figures below are not index searches")
        if r.get("segment_strategies_at_max_search_list"):
            print(f"segments at search_list={max(args.sweep)} (EXPLAIN ANALYZE): "
                  f"{r['segment_strategies_at_max_search_list']}")
        if r.get("sweep"):
            knob = "search_list" if key == "quiver" else "ef_search"
            print(f"{knob:>11} {'conns':>5} {'recall@10':>9} {'QPS':>8} {'p50 ms':>8} {'p99 ms':>8}")
            for s in r["sweep"]:
                print(f"{s['setting']:>11} {s['conns']:>5} {s['recall']:>9.4f} {s['qps']:>8.0f} "
                      f"{s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f}"
                      + (f"  ({s['short_results']} short)" if s["short_results"] else ""))
        if key == "quiver" and ("load_vmhwm" in r or "serving_peak_rss" in r):
            print(f"memory: load-phase VmHWM {fmt_bytes(r.get('load_vmhwm'))}"
                  + ("" if r.get("restarted") else " (no restart: serving figures include the load phase)"))
            if r.get("serving_peak_rss"):
                print(f"        serving peak RSS {fmt_bytes(r['serving_peak_rss'])} "
                      f"({r['serving_peak_rss'] / raw:.2f}x raw vector bytes; anonymous "
                      f"{fmt_bytes(r.get('serving_peak_rss_anon'))}, file-backed "
                      f"{fmt_bytes(r.get('serving_peak_rss_file'))}), serving VmHWM "
                      f"{fmt_bytes(r.get('serving_vmhwm'))} ({(r.get('serving_vmhwm') or 0) / raw:.2f}x, "
                      f"includes loading the segments at the first queries); "
                      f"data dir {fmt_bytes(r.get('data_dir_bytes'))}")
        if key == "pg" and r.get("serving_rss_anon_sum_peak"):
            print(f"memory: backends' private RSS (sum of RssAnon, peak) "
                  f"{fmt_bytes(r['serving_rss_anon_sum_peak'])}; shared memory touched (max RssShmem of one "
                  f"process) {fmt_bytes(r['serving_rss_shmem_max_peak'])} of shared_buffers "
                  f"{r['settings']['shared_buffers']}; index + table "
                  f"{fmt_bytes(r['total_relation_bytes'])}; data dir {fmt_bytes(r.get('data_dir_bytes'))}")
        if r.get("server_log_errors"):
            print(f"server log errors: {r['server_log_errors'][:3]}")
    summary = res["summary"] = {}
    print(f"\n--- summary: best QPS at recall@{K} >= {args.target_recall} ---")
    for conns in args.conns:
        row = {}
        for key in ("quiver", "pg"):
            b = best_at((res.get(key) or {}).get("sweep") or [], conns, args.target_recall)
            row[key] = b
        q, p = row["quiver"], row["pg"]
        ratio = q["qps"] / p["qps"] if q and p else None
        summary[f"conns_{conns}"] = {"quiver": q, "pgvector": p, "qps_ratio_quiver_over_pgvector": ratio}

        def f(b, key):
            if b:
                return (f"{b['qps']:.0f} QPS (setting {b['setting']}, recall {b['recall']:.3f}, "
                        f"p99 {b['p99_ms']:.1f} ms)")
            if key not in res:
                return "skipped"
            return "not reached" if res[key].get("sweep") else "no figures"

        print(f"{conns} conn: Quiver {f(q, 'quiver')}; pgvector {f(p, 'pg')}; Quiver/pgvector "
              + (f"{ratio:.2f}x" if ratio else "-"))


def parse_ints(s):
    return [int(x) for x in s.split(",") if x.strip()]


def default_quiver_bin():
    env = os.environ.get("QUIVER_BIN")
    if env:
        return env
    release = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release/quiver")
    for p in (release, os.path.join(ROOT, "target/debug/quiver")):
        if os.path.exists(p):
            return p
    return release


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--sweep", type=parse_ints, default=[10, 20, 40, 64, 100, 200],
                    help="diskann.search_list / hnsw.ef_search values")
    ap.add_argument("--conns", type=parse_ints, default=[1, 8])
    ap.add_argument("--seal-rows", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--copy-chunk", type=int, default=10_000, help="rows per binary COPY")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--quiver-bin", default=default_quiver_bin(),
                    help="QUIVER_BIN, else the release build, else target/debug/quiver")
    ap.add_argument("--quiver-config", default=None,
                    help="TOML config passed to quiver standalone (e.g. [data] build_threads = 2)")
    ap.add_argument("--diskann-options", default="", help="WITH (...) options of the diskann index, "
                    "e.g. 'max_degree = 64, build_search_list = 128'")
    ap.add_argument("--hnsw-m", type=int, default=16)
    ap.add_argument("--hnsw-ef-construction", type=int, default=64)
    ap.add_argument("--pg-bin-dir", default=None, help="PostgreSQL bin dir (default: pgserver's)")
    ap.add_argument("--no-restart", action="store_true", help="do not restart Quiver before searching")
    ap.add_argument("--skip-pg", action="store_true")
    ap.add_argument("--skip-quiver", action="store_true")
    ap.add_argument("--build-timeout", type=float, default=7200)
    ap.add_argument("--query-timeout", type=float, default=1800, help="seconds per sweep point")
    ap.add_argument("--json", default=None, help="also write the figures as JSON here")
    ap.add_argument("--cache-dir", default="/tmp/quiver-bench-cache")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (data dirs and logs)")
    args = ap.parse_args()
    if not args.sweep or not args.conns:
        ap.error("--sweep and --conns need at least one value")

    data, queries, gt = load_data(args)
    texts = [vec_text(q) for q in queries]
    payloads = [binary_copy_payload(data, s, min(s + args.copy_chunk, args.rows))
                for s in range(0, args.rows, args.copy_chunk)]
    res = {"config": {k: v for k, v in vars(args).items()}, "raw_vector_bytes": args.rows * args.dim * 4}
    tmp_root = tempfile.mkdtemp(prefix="quiver-vsbench-")
    log(f"temp dir {tmp_root}")
    failed = False
    try:
        for key, fn, skip in (("quiver", bench_quiver, args.skip_quiver), ("pg", bench_pg, args.skip_pg)):
            if skip:
                continue
            res[key] = {}
            try:
                fn(args, data, texts, gt, payloads, tmp_root, res[key])
            except BenchError as e:
                failed = True
                res[key]["error"] = str(e)
                log(f"{key}: FAILED: {e}")
            except Exception as e:
                failed = True
                res[key]["error"] = f"{type(e).__name__}: {e}"
                log(f"{key}: FAILED:\n{traceback.format_exc()}")
    except KeyboardInterrupt:
        failed = True
        log("interrupted")
    finally:
        if args.keep:
            log(f"kept {tmp_root}")
        else:
            shutil.rmtree(tmp_root, ignore_errors=True)
    print_report(args, res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=str)
        print(f"\nJSON written to {args.json}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
