#!/usr/bin/env python3
"""Ingest and exact top-10 benchmark for Quiver standalone (issue: standalone spine).

Starts its own server (release or debug binary via QUIVER_BIN), then:
  1. loads N x D vectors (default 100,000 x 384) with multi-row INSERTs,
     once over 1 connection and once over 8 connections (fresh tables);
  2. runs Q exact top-10 queries (`ORDER BY embedding <-> q LIMIT 10`) and
     reports p50/p99 latency, QPS at 1 and 8 connections, and the bytes of
     vectors scanned per second;
  3. prints the server's peak RSS (VmHWM).

Usage: .venv/bin/python bench/ingest_knn.py [--rows N] [--dim D] [--queries Q]
It is a benchmark, not a test: it prints figures and never fails on them.
"""
import argparse
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time

import numpy as np
import psycopg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vec_text(v):
    return "[" + ",".join(f"{x:.6g}" for x in v) + "]"


def run_threads(worker, conns):
    """Runs worker(0..conns-1) on one thread each; returns the wall time."""
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def load(port, table, texts, dim, conns, batch):
    """Loads pre-rendered vector literals, so the timing is the server's."""
    n = len(texts)
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f"DROP TABLE IF EXISTS {table}")
        c.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, embedding vector({dim}))")
    chunks = [(s, min(s + batch, n)) for s in range(0, n, batch)]

    def worker(idx):
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as c:
            for k in range(idx, len(chunks), conns):
                s, e = chunks[k]
                values = ",".join(f"({i},'{texts[i]}')" for i in range(s, e))
                c.execute(f"INSERT INTO {table} VALUES {values}")

    return run_threads(worker, conns)


def binary_copy_payload(data, start, end):
    """pgvector-python's binary COPY layout for (id bigint, embedding vector)."""
    dim = data.shape[1]
    header = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
    vec_len = 4 + 4 * dim
    parts = [header]
    be = data[start:end].astype(">f4")
    for i in range(start, end):
        parts.append(struct.pack("!hiqiHH", 2, 8, i, vec_len, dim, 0))
        parts.append(be[i - start].tobytes())
    parts.append(struct.pack("!h", -1))
    return b"".join(parts)


def copy_load(port, table, payloads, dim, conns):
    """Binary COPY, one COPY per chunk; payloads are rendered beforehand."""
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f"DROP TABLE IF EXISTS {table}")
        c.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, embedding vector({dim}))")

    def worker(idx):
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as c:
            for k in range(idx, len(payloads), conns):
                with c.cursor().copy(f"COPY {table} FROM STDIN (FORMAT binary)") as cp:
                    cp.write(payloads[k])

    return run_threads(worker, conns)


def query(port, table, queries, conns):
    lat = []
    lock = threading.Lock()

    def worker(idx):
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as c:
            for k in range(idx, len(queries), conns):
                t = time.perf_counter()
                c.execute(f"SELECT id FROM {table} ORDER BY embedding <-> %s::vector LIMIT 10",
                          (vec_text(queries[k]),)).fetchall()
                with lock:
                    lat.append(time.perf_counter() - t)

    wall = run_threads(worker, conns)
    lat.sort()
    return len(queries) / wall, lat[len(lat) // 2] * 1000, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000


def memory_bandwidth_gbs():
    """Single-thread read bandwidth of this machine: numpy sums a 1 GiB
    float32 array (best of 3), the same access pattern as an exact scan."""
    a = np.ones(1 << 28, dtype=np.float32)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        a.sum()
        best = max(best, a.nbytes / (time.perf_counter() - t) / 1e9)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--copy-chunk", type=int, default=10_000)
    args = ap.parse_args()
    server, port, data_dir = start_server("quiver-bench-")
    try:
        rng = np.random.default_rng(7)
        data = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
        queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
        texts = [vec_text(v) for v in data]
        for conns in (1, 8):
            secs = load(port, f"bench_{conns}", texts, args.dim, conns, args.batch)
            print(f"INSERT {args.rows} x {args.dim} over {conns} conn: {secs:.1f}s = {args.rows / secs:,.0f} rows/s")
        chunk = args.copy_chunk
        payloads = [binary_copy_payload(data, s, min(s + chunk, args.rows)) for s in range(0, args.rows, chunk)]
        mb = sum(len(p) for p in payloads) / 1e6
        for conns in (1, 8):
            secs = copy_load(port, f"bench_copy_{conns}", payloads, args.dim, conns)
            print(f"binary COPY {args.rows} x {args.dim} over {conns} conn ({chunk}-row COPYs): {secs:.1f}s = "
                  f"{args.rows / secs:,.0f} rows/s, {mb / secs:.1f} MB/s")
        raw = args.rows * args.dim * 4
        print(f"machine read bandwidth (numpy sum, 1 thread): {memory_bandwidth_gbs():.1f} GB/s")
        for conns in (1, 8):
            qps, p50, p99 = query(port, "bench_8", queries, conns)
            print(f"exact top-10 @ {conns} conn: {qps:.1f} QPS, p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
                  f"vector bytes scanned {raw * qps / 1e9:.2f} GB/s")
        with open(f"/proc/{server.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    print("server peak RSS:", line.split(":", 1)[1].strip())
    finally:
        stop_server(server, data_dir)


def start_server(prefix):
    """A standalone server (QUIVER_BIN, default the release build) on a free
    port and a fresh data dir; returns (process, port, data dir)."""
    binary = os.environ.get("QUIVER_BIN", os.path.join(ROOT, "target/release/quiver"))
    data_dir = tempfile.mkdtemp(prefix=prefix)
    port = free_port()
    server = subprocess.Popen([binary, "standalone", "--data-dir", data_dir, "--listen", f"127.0.0.1:{port}"],
                              stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return server, port, data_dir


def stop_server(server, data_dir):
    server.terminate()
    server.wait(timeout=30)
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
