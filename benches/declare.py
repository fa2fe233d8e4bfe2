#!/usr/bin/env python3
"""How long declaring and deleting quorum queues takes: a 3-node warren cluster against a
3-node RabbitMQ 3.10 cluster, on this machine.

    benches/declare.py [--queues 200] [--rounds 3] [--out benches/results] [--skip-rabbitmq]

A pika client on node 2 declares --queues quorum queues one after another (each waits
for its declare-ok), then deletes them the same way. Prints per broker the medians over
the rounds of: total time, p50 and p90 of one declare, and of one delete; writes
declare.json to --out. Clusters are started as benches/cluster.py starts them.
"""

import argparse
import json
import os
import statistics
import sys
import time

import pika

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402


def log(msg):
    print(f"declare: {msg}", file=sys.stderr, flush=True)


def timed(call, n):
    """Milliseconds each of `n` calls took."""
    out = []
    for i in range(n):
        t = time.perf_counter()
        call(i)
        out.append((time.perf_counter() - t) * 1000)
    return out


def summary(ms):
    ms = sorted(ms)
    return {"total_s": round(sum(ms) / 1000, 2), "p50_ms": round(ms[len(ms) // 2], 1),
            "p90_ms": round(ms[len(ms) * 9 // 10], 1)}


def one_round(c, n):
    ch = pika.BlockingConnection(pika.URLParameters(c.urls[1])).channel()
    args = {"x-queue-type": "quorum"}
    declares = timed(lambda i: ch.queue_declare(f"dq{i}", durable=True, arguments=args), n)
    deletes = timed(lambda i: ch.queue_delete(f"dq{i}"), n)
    ch.connection.close()
    return {"declare": summary(declares), "delete": summary(deletes)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cluster.common_args(ap, rounds=3)
    ap.add_argument("--queues", type=int, default=200)
    a = ap.parse_args()
    _, _, kinds = cluster.prepare(a, "declare", single=False)
    runs = {name: [] for name, _ in kinds}
    for name, start in cluster.rounds(kinds, a.rounds, log):
        c = start()
        try:
            time.sleep(2)
            runs[name].append(one_round(c, a.queues))
            log(f"{name}: {runs[name][-1]}")
        finally:
            c.stop()
    rows = []
    for name, rs in runs.items():
        row = {"broker": name, "queues": a.queues, "rounds": rs}
        for op in ("declare", "delete"):
            for k in ("total_s", "p50_ms", "p90_ms"):
                row[f"{op}_{k}"] = round(statistics.median(r[op][k] for r in rs), 2)
        rows.append(row)
    print(f"| {a.queues} quorum queues, one at a time from node 2 | "
          + " | ".join(r["broker"] for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for op in ("declare", "delete"):
        cells = [f"{r[f'{op}_total_s']} s (p50 {r[f'{op}_p50_ms']} ms, "
                 f"p90 {r[f'{op}_p90_ms']} ms)" for r in rows]
        print(f"| {op} | " + " | ".join(cells) + " |")
    with open(os.path.join(a.out, "declare.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
