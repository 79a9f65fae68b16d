#!/usr/bin/env python3
"""Ingest through 1 and 2 proxies of a cluster whose every role is a process.

It starts etcd, a coordinator, one or two streaming nodes (two share the
shards, which needs `--wal kafka`), a query node, a data node and two
proxies (`quiver proxy`) on 127.0.0.1, then loads N x D vectors
(default 100,000 x 384) with binary COPY over C connections (default 4):
first all through one proxy, then split over both (into a fresh table).
For each run it prints rows/s and MB/s, the CPU seconds each process spent
per 100,000 rows, and every process's RSS afterwards.

On one 2-core machine every process shares the same two cores, so raw
rows/s cannot double with a second proxy here; the per-process CPU shows
which role does the work: the proxies' share divides over proxies on more
machines, and so does the streaming nodes' with `--streaming-nodes 2` (each
owns half the shards; a COPY spanning both commits across them).

Usage:
  .venv/bin/python bench/cluster_ingest.py [--rows N] [--dim D] [--conns C]
      [--chunk ROWS] [--wal local|kafka] [--streaming-nodes 1|2]
  QUIVER_BIN=... or --quiver-bin picks the binary (default: the release build).

A benchmark, not a test: it prints figures and never fails on them.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psycopg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vector_search as vs  # noqa: E402
from cluster_search import Proc, cpu_seconds, rss, start_etcd, write_config  # noqa: E402
from ingest_knn import binary_copy_payload, free_port  # noqa: E402

# Below the rows per shard of a run: the load measures the write path, not seals.
SEAL_ROWS = 100_000
SERVICES = os.path.expanduser(os.environ.get("QUIVER_SERVICES_DIR", "~/.cache/quiver-services"))


def load(ports, table, payloads, dim, conns):
    with psycopg.connect(host="127.0.0.1", port=ports[0], user="postgres", dbname="postgres",
                         autocommit=True) as c:
        c.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, embedding vector({dim}))")
    errors = []

    def worker(idx):
        try:
            with psycopg.connect(host="127.0.0.1", port=ports[idx % len(ports)], user="postgres",
                                 dbname="postgres", autocommit=True) as c:
                for k in range(idx, len(payloads), conns):
                    with c.cursor().copy(f"COPY {table} FROM STDIN (FORMAT binary)") as cp:
                        cp.write(payloads[k])
        except Exception as e:  # reported after the run
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(conns)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=5_000)
    ap.add_argument("--wal", choices=["local", "kafka"], default="local")
    ap.add_argument("--streaming-nodes", type=int, choices=[1, 2], default=1)
    ap.add_argument("--quiver-bin", default=vs.default_quiver_bin())
    args = ap.parse_args()

    data = np.random.default_rng(42).normal(size=(args.rows, args.dim)).astype(np.float32)
    payloads = [binary_copy_payload(data, s, min(s + args.chunk, args.rows))
                for s in range(0, args.rows, args.chunk)]
    mb = sum(len(p) for p in payloads) / 1e6
    work = tempfile.mkdtemp(prefix="quiver-cluster-ingest-")
    ports = {name: free_port() for name in
             ("etcd", "etcd_peer", "kafka", "query", "data", "coordinator", "streaming",
              "streaming2", "p1", "p2")}
    streaming = [("streaming", "streaming-node")]
    if args.streaming_nodes == 2:
        if args.wal != "kafka":
            ap.error("two streaming nodes share the shards only on --wal kafka")
        streaming.append(("streaming2", "streaming-node"))
    config = os.path.join(work, "quiver.toml")
    wal_toml = (f'kind = "kafka"\nbrokers = "127.0.0.1:{ports["kafka"]}"\ntopic = "bench-wal"\n'
                f'delete_sealed_records = false' if args.wal == "kafka" else None)
    roles = {**ports, "streaming": [ports[name] for name, _ in streaming]}
    write_config(config, [ports["query"]], ports["data"], os.path.join(work, "objects"),
                 SEAL_ROWS, roles=roles, wal_toml=wal_toml)
    procs = []
    try:
        procs.append(start_etcd(work, ports["etcd"], ports["etcd_peer"]))
        if args.wal == "kafka":
            url = f"tcp://127.0.0.1:{ports['kafka']}"
            procs.append(Proc("tansu", [f"{SERVICES}/bin/tansu", "broker", "--listener-url", url,
                                        "--advertised-listener-url", url, "--storage-engine",
                                        # resolved against its working directory
                                        "sqlite://tansu.db"], ports["kafka"],
                              f"{work}/tansu.log", cwd=work).start())
        for name, role in [("query", "query-node"), ("data", "data-node"),
                           ("coordinator", "coordinator"), *streaming,
                           ("p1", "proxy"), ("p2", "proxy")]:
            procs.append(Proc(name, [args.quiver_bin, role, "--config", config, "--data-dir",
                                     f"{work}/{name}", "--listen", f"127.0.0.1:{ports[name]}"],
                              ports[name], f"{work}/{name}.log").start())
        quiver = [p for p in procs if p.name not in ("etcd", "tansu")]
        vs.log(f"{args.rows} x {args.dim} rows, {mb:.1f} MB of binary COPY, {args.conns} connections, "
               f"{args.wal} WAL, {len(streaming)} streaming node(s)")
        results = []
        for setup, proxy_ports in [("1 proxy", [ports["p1"]]), ("2 proxies", [ports["p1"], ports["p2"]])]:
            cpu0 = {p.name: cpu_seconds(p.proc.pid) for p in quiver}
            table = "items_" + str(len(proxy_ports))
            wall = load(proxy_ports, table, payloads, args.dim, args.conns)
            cpu = {p.name: (cpu_seconds(p.proc.pid) - cpu0[p.name]) * 100_000 / args.rows
                   for p in quiver}
            with psycopg.connect(host="127.0.0.1", port=ports["p2"], user="postgres",
                                 dbname="postgres") as c:
                count = c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            assert count == args.rows, (count, args.rows)
            memory = {p.name: rss(p.proc.pid) for p in quiver}
            results.append((setup, wall, cpu, memory))
            vs.log(f"{setup}: {args.rows / wall:,.0f} rows/s, {mb / wall:.1f} MB/s")
        print()
        names = [p.name for p in quiver]
        print("| setup | rows/s | MB/s | " + " | ".join(f"{n} CPU s/100k rows" for n in names) + " |")
        print("|---" * (3 + len(names)) + "|")
        for setup, wall, cpu, _ in results:
            print(f"| {setup} | {args.rows / wall:,.0f} | {mb / wall:.1f} | "
                  + " | ".join(f"{cpu[n]:.2f}" for n in names) + " |")
        print()
        print("RSS after each run (MiB): " + "; ".join(
            f"{setup}: " + ", ".join(f"{n} {memory[n] / 2**20:.0f}" for n in names)
            for setup, _, _, memory in results))
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
