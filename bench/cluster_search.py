#!/usr/bin/env python3
"""Search with 1 and 2 query-node processes on the same data.

It starts a data node, two query nodes (`quiver query-node`) and the proxy
process (`quiver standalone`, which keeps the coordinator and the streaming
node) on one shared local object store -- or, with `--roles`, etcd and the
coordinator, streaming node and proxy as processes of their own -- and:
  1. loads N x D vectors (default 100,000 x 384, the clustered data of
     bench/vector_search.py) with binary COPY, seals them into several
     segments and builds DiskANN indexes on the data node;
  2. restarts the proxy (the coordinator, with `--roles`) listing one query
     node, then both, and for each runs
     Q top-10 queries over 1 and 8 connections at the given search lists:
     recall@10 against exact numpy, QPS, p50/p99;
  3. reports per process the RSS while serving and the CPU seconds spent per
     1,000 queries, and the segments each query node serves: the work split
     that would let two machines serve twice the QPS.

On one 2-core machine every process shares the same two cores, so raw QPS
with two query nodes cannot double here; the per-node CPU and segment
figures show how the work divides.

Usage:
  .venv/bin/python bench/cluster_search.py [--rows N] [--dim D] [--queries Q]
      [--search-lists 40,100] [--conns 1,8] [--seal-rows S] [--roles]
  QUIVER_BIN=... or --quiver-bin picks the binary (default: the release build).

A benchmark, not a test: it prints figures and never fails on them.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vector_search as vs  # noqa: E402
from ingest_knn import binary_copy_payload, free_port  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss(pid):
    status = vs.proc_status(pid, "VmRSS")
    return status["VmRSS"] if status else 0


class Proc:
    def __init__(self, name, args, port, log_path, cwd=None):
        self.name, self.args, self.port, self.log_path = name, args, port, log_path
        self.cwd = cwd
        self.proc = None

    def start(self, timeout=120):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.cwd)
        vs.wait_for_port(self.port, self.proc, timeout, self.name, self.log_path)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_etcd(work, port, peer_port):
    """One etcd member on 127.0.0.1, after it elected itself."""
    url, peer = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer_port}"
    etcd = Proc("etcd", ["etcd", "--name", "b", "--data-dir", os.path.join(work, "etcd"),
                         "--listen-client-urls", url, "--advertise-client-urls", url,
                         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                         "--initial-cluster", f"b={peer}"], port,
                os.path.join(work, "etcd.log")).start()
    time.sleep(2)
    return etcd


def write_config(path, query_ports, data_port, objects, seal_rows, roles=None, wal_toml=None):
    """`roles`: ports of etcd, the coordinator and the streaming node (or a
    list of streaming nodes' ports) when every role is a process of its
    own; `wal_toml`: the `[storage.wal]` body
    (default: a local WAL beside the objects)."""
    wal_toml = wal_toml or f'kind = "local"\ndir = "{os.path.dirname(objects)}/wal"'

    nodes = ", ".join(f'"127.0.0.1:{p}"' for p in query_ports)
    with open(path, "w") as f:
        if roles:
            ports = roles["streaming"] if isinstance(roles["streaming"], list) else [roles["streaming"]]
            streaming = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
            f.write(f"""
[cluster]
coordinators = ["127.0.0.1:{roles['coordinator']}"]
streaming_nodes = [{streaming}]

[storage.meta]
kind = "etcd"
endpoints = ["http://127.0.0.1:{roles['etcd']}"]
root = "/bench"

[storage.wal]
{wal_toml}
""")
        f.write(f"""
[coordinator]
query_nodes = [{nodes}]
data_nodes = ["127.0.0.1:{data_port}"]

[streaming]
seal_rows = {seal_rows}

[data]
build_threads = 2

[storage.object]
kind = "local"
root = "{objects}"
""")


def measure(name, port, procs, search_lists, conns_list, texts, gt, timeout):
    rows = []
    vs.run_queries(port, [f"SET diskann.search_list = {search_lists[0]}"], texts[:50], 1, timeout)
    for sl in search_lists:
        for conns in conns_list:
            cpu0 = {p.name: cpu_seconds(p.proc.pid) for p in procs}
            ids, lat, wall = vs.run_queries(port, [f"SET diskann.search_list = {sl}"], texts, conns, timeout)
            # CPU milliseconds per query, per process.
            cpu = {p.name: (cpu_seconds(p.proc.pid) - cpu0[p.name]) * 1000 / len(texts) for p in procs}
            recall, _ = vs.recall_at_k(ids, gt)
            rows.append({
                "setup": name, "search_list": sl, "conns": conns, "recall": recall,
                "qps": len(texts) / wall, "p50": vs.percentile_ms(lat, 0.5),
                "p99": vs.percentile_ms(lat, 0.99), "cpu_ms": cpu,
            })
            vs.log(f"{name} sl={sl} conns={conns}: recall {recall:.3f}, {rows[-1]['qps']:.0f} QPS, "
                   f"p50 {rows[-1]['p50']:.2f} ms, p99 {rows[-1]['p99']:.2f} ms")
    memory = {p.name: rss(p.proc.pid) for p in procs}
    return rows, memory


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--search-lists", type=vs.parse_ints, default=[40, 100])
    ap.add_argument("--conns", type=vs.parse_ints, default=[1, 8])
    ap.add_argument("--seal-rows", type=int, default=20_000)
    ap.add_argument("--copy-chunk", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--quiver-bin", default=vs.default_quiver_bin())
    ap.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "quiver-bench-data"))
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--roles", action="store_true",
                    help="coordinator, streaming node and proxy as processes of their own (on etcd)")
    args = ap.parse_args()

    data, queries, gt = vs.load_data(args)
    texts = [vs.vec_text(q) for q in queries]
    payloads = [binary_copy_payload(data, s, min(s + args.copy_chunk, args.rows))
                for s in range(0, len(data), args.copy_chunk)]
    work = tempfile.mkdtemp(prefix="quiver-cluster-bench-")
    procs = []
    try:
        objects = os.path.join(work, "objects")
        query_ports = [free_port(), free_port()]
        data_port = free_port()
        proxy_port = free_port()
        env_log = {"RUST_LOG": "info,quiver_transport=debug"}
        os.environ.update(env_log)
        config = os.path.join(work, "cluster.toml")
        nodes = {}
        for name, role, port in (("query-1", "query-node", query_ports[0]),
                                 ("query-2", "query-node", query_ports[1]),
                                 ("data", "data-node", data_port)):
            nodes[name] = Proc(name, [args.quiver_bin, role, "--config", config, "--data-dir",
                                      os.path.join(work, name), "--listen", f"127.0.0.1:{port}"],
                               port, os.path.join(work, f"{name}.log"))
        roles = None
        if args.roles:
            roles = {"etcd": free_port(), "etcd_peer": free_port(), "coordinator": free_port(),
                     "streaming": free_port()}
            procs.append(start_etcd(work, roles["etcd"], roles["etcd_peer"]))
        role = lambda name, sub, port, *extra: Proc(  # noqa: E731
            name, [args.quiver_bin, sub, "--config", config, "--data-dir", os.path.join(work, name),
                   "--listen", f"127.0.0.1:{port}", *extra], port, os.path.join(work, f"{name}.log"))
        write_config(config, query_ports[:1], data_port, objects, args.seal_rows, roles)
        for p in nodes.values():
            procs.append(p.start())
        if roles:
            # The coordinator reads the query-node list: it is what restarts.
            placer = role("coordinator", "coordinator", roles["coordinator"]).start()
            procs.append(placer)
            procs.append(role("streaming", "streaming-node", roles["streaming"]).start())
            proxy = role("proxy", "proxy", proxy_port).start()
        else:
            proxy = role("proxy", "standalone", proxy_port).start()
            placer = proxy
        procs.append(proxy)

        t = time.perf_counter()
        load_s = vs.copy_load(proxy_port, payloads, args.dim)
        with vs.connect(proxy_port) as c:
            c.execute("CHECKPOINT")
            t_build = time.perf_counter()
            c.execute("CREATE INDEX ON items USING diskann (embedding)")
        vs.wait_builds(proxy_port, args.timeout)
        build_s = time.perf_counter() - t_build
        sealed = vs.segments(proxy_port)
        vs.log(f"loaded {args.rows} rows in {load_s:.1f}s, indexed in {build_s:.1f}s on the data node, "
               f"{len(sealed)} segments ({time.perf_counter() - t:.0f}s)")

        results, memories, split = [], {}, {}
        for n in (1, 2):
            placer.stop()
            write_config(config, query_ports[:n], data_port, objects, args.seal_rows, roles)
            marks = {name: os.path.getsize(nodes[name].log_path) for name in ("query-1", "query-2")}
            placer.start()
            # The coordinator places segments at start-up (and proxies
            # follow a new coordinator's catalog within a moment).
            time.sleep(3 if roles else 1)
            serving = [p for p in procs if p.name in ("proxy", "coordinator", "streaming", "data")]
            serving += [nodes[f"query-{i + 1}"] for i in range(n)]
            rows, memory = measure(f"{n} query node(s)", proxy_port, serving, args.search_lists,
                                   args.conns, texts, gt, args.timeout)
            results += rows
            memories[n] = memory
            split[n] = {}
            addresses = {f"127.0.0.1:{query_ports[i]}": f"query-{i + 1}" for i in range(2)}
            with vs.connect(proxy_port) as c:
                for node, segs, rows in c.execute(
                        "SELECT query_node, count(*), sum(rows) FROM quiver.segments "
                        "WHERE state <> 'growing' GROUP BY query_node ORDER BY 1").fetchall():
                    split[n][addresses.get(node, node)] = (segs, rows)
            for name in ("query-1", "query-2")[:n]:
                with open(nodes[name].log_path, errors="replace") as f:
                    f.seek(marks[name])
                    calls = sum(1 for line in f if "query.search_segments" in line)
                segs, rows = split[n].get(name, (0, 0))
                split[n][name] = (segs, rows, calls)

        print()
        print(f"== cluster search: {args.rows} x {args.dim}, {len(sealed)} segments, {args.queries} queries, "
              f"2 cores shared by all processes ==")
        print(f"load {load_s:.1f}s ({args.rows / load_s:,.0f} rows/s), index build {build_s:.1f}s (data node)")
        print("every role a process (--roles)" if roles else "proxy = quiver standalone")
        print("| query nodes | search_list | conns | recall@10 | QPS | p50 ms | p99 ms | CPU ms per query: proxy / "
              + ("coordinator / streaming / " if roles else "") + "query nodes |")
        print("|---|---|---|---|---|---|---|---|")
        for r in results:
            q_cpu = " + ".join(f"{v:.2f}" for k, v in r["cpu_ms"].items() if k.startswith("query"))
            others = "".join(f"{r['cpu_ms'][k]:.2f} / " for k in ("coordinator", "streaming") if k in r["cpu_ms"])
            print(f"| {r['setup'][0]} | {r['search_list']} | {r['conns']} | {r['recall']:.3f} | {r['qps']:,.0f} | "
                  f"{r['p50']:.2f} | {r['p99']:.2f} | {r['cpu_ms']['proxy']:.2f} / {others}{q_cpu} |")
        print()
        for n, memory in memories.items():
            print(f"RSS with {n} query node(s): " + ", ".join(f"{k} {vs.fmt_bytes(v)}" for k, v in memory.items()))
        for n, nodes_split in split.items():
            print(f"work with {n} query node(s): " + "; ".join(
                f"{k} serves {v[0]} segments / {v[1]:,} rows, answered {v[2]:,} search calls"
                for k, v in nodes_split.items() if len(v) == 3))
        print(f"raw vectors: {vs.fmt_bytes(args.rows * args.dim * 4)}")
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
