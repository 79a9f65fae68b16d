#!/usr/bin/env python3
"""Bulk-load benchmark (issue 3): binary COPY of N x D vectors into a fresh
server, on a quiet server (nothing else loading), at 1 and 8 connections.

For each connection count it loads a fresh table with --chunk-row COPYs in
pgvector's binary layout, then reports rows/s, MB/s of COPY data, the
server's peak RSS (VmHWM) and that the row count is exact. Every COPY is
acknowledged only after its WAL append is fsync'd (durable).

With --pg it loads the same COPY data into PostgreSQL + pgvector (pgserver's
bundled build, as bench/vector_search.py runs it) in the same session, so
the two rates are compared on one machine state.

Usage: QUIVER_BIN=target/release/quiver .venv/bin/python bench/copy_load.py
       [--rows 400000] [--dim 384] [--chunk 10000] [--repeat 3] [--pg [--pg-bin-dir DIR]]
It is a benchmark, not a test: it prints figures and never fails on them.
"""
import argparse
import os
import shutil
import statistics
import tempfile

import numpy as np
import psycopg

from ingest_knn import binary_copy_payload, copy_load, start_server, stop_server


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--chunk", type=int, default=10_000)
    ap.add_argument("--pg", action="store_true", help="also load PostgreSQL + pgvector")
    ap.add_argument("--pg-bin-dir", default=None)
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per system and connection count (alternating); the median is reported")
    args = ap.parse_args()
    rng = np.random.default_rng(11)
    data = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    payloads = [binary_copy_payload(data, s, min(s + args.chunk, args.rows))
                for s in range(0, args.rows, args.chunk)]
    mb = sum(len(p) for p in payloads) / 1e6
    raw_mib = args.rows * args.dim * 4 / 2**20
    print(f"{args.rows} x {args.dim} float32 = {raw_mib:.0f} MiB of vectors, {mb:.0f} MB of COPY data, "
          f"{len(payloads)} COPYs of {args.chunk} rows")
    for conns in (1, 8):
        quiver, pg = [], []
        for _ in range(args.repeat):
            quiver.append(quiver_load(args, payloads, mb, conns))
            if args.pg:
                pg.append(pg_load(args, payloads, mb, conns))
        summary = f"{conns} conn: Quiver median {statistics.median(quiver):,.0f} rows/s " \
                  f"(runs {', '.join(f'{r:,.0f}' for r in quiver)})"
        if pg:
            summary += f"; PostgreSQL median {statistics.median(pg):,.0f} rows/s " \
                       f"(runs {', '.join(f'{r:,.0f}' for r in pg)}); " \
                       f"ratio {statistics.median(quiver) / statistics.median(pg):.2f}x"
        print(summary)


def quiver_load(args, payloads, mb, conns):
    """One load into a fresh server (so one run's flushes do not slow the
    next); returns rows/s."""
    server, port, data_dir = start_server("quiver-copy-")
    try:
        secs = copy_load(port, "bulk", payloads, args.dim, conns)
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres",
                             autocommit=True) as c:
            count = c.execute("SELECT count(*) FROM bulk").fetchone()[0]
        print(f"  Quiver binary COPY over {conns} conn: {secs:.2f}s = {args.rows / secs:,.0f} rows/s, "
              f"{mb / secs:.1f} MB/s; rows {count} ({'exact' if count == args.rows else 'WRONG'}); "
              f"server peak RSS {peak_rss_mib(server.pid):.0f} MiB")
        return args.rows / secs
    finally:
        stop_server(server, data_dir)


def pg_load(args, payloads, mb, conns):
    """The same COPYs into a fresh PostgreSQL + pgvector (fsync on, as
    Quiver's acknowledged COPYs are durable)."""
    from vector_search import PgServer, pg_bin_dir

    root = tempfile.mkdtemp(prefix="pg-copy-")
    os.chmod(root, 0o755)
    pg = PgServer(pg_bin_dir(args), os.path.join(root, "pg"))
    os.makedirs(pg.root)
    try:
        pg.start({"shared_buffers": "'2GB'", "max_wal_size": "'8GB'", "max_connections": "50",
                  "jit": "off"})
        with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres",
                             autocommit=True) as c:
            c.execute("CREATE EXTENSION IF NOT EXISTS vector")
            version = c.execute("SHOW server_version").fetchone()[0]
        secs = copy_load(pg.port, "bulk", payloads, args.dim, conns)
        print(f"  PostgreSQL {version} + pgvector, binary COPY over {conns} conn: {secs:.2f}s = "
              f"{args.rows / secs:,.0f} rows/s, {mb / secs:.1f} MB/s")
        return args.rows / secs
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
