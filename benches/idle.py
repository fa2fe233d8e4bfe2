#!/usr/bin/env python3
"""What idle quorum queues cost: CPU and RSS of each node of a 3-node cluster holding
--queues quorum queues that nobody uses, warren against RabbitMQ 3.10, on this machine.

    benches/idle.py [--queues 1000] [--settle 10] [--window 20] [--rounds 1]
                    [--binary PATH ...] [--out benches/results] [--skip-rabbitmq]

A pika client on node 1 declares the queues and publishes one persistent message to each;
after --settle seconds, each node's CPU time (its whole process group: RabbitMQ's beam
runs under a shell script) is read over --window seconds and given as a percentage of one
core. With --binary (once or more) those warren binaries are measured instead of the
one built from this tree (an A/B: say, before and after a change). Writes idle.json to
--out. Clusters are started as benches/cluster.py starts them.
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
import compare  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"idle: {msg}", file=sys.stderr, flush=True)


def cpu_seconds(pgid):
    """CPU time (user + system) of every process in the group so far."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return total / TICKS


def one_round(c, n, settle, window):
    conn = pika.BlockingConnection(pika.URLParameters(c.urls[0]))
    ch = conn.channel()
    ch.confirm_delivery()
    args = {"x-queue-type": "quorum"}
    started = time.time()
    for i in range(n):
        ch.queue_declare(f"idle{i}", durable=True, arguments=args)
        ch.basic_publish("", f"idle{i}", b"x" * 1024,
                         pika.BasicProperties(delivery_mode=2))
    declared_s = time.time() - started
    conn.close()
    time.sleep(settle)
    before = [cpu_seconds(p.pid) for p in c.procs]
    t = time.time()
    time.sleep(window)
    used = [cpu_seconds(p.pid) - b for p, b in zip(c.procs, before)]
    elapsed = time.time() - t
    return {"declare_and_publish_s": round(declared_s, 1),
            "cpu_percent": [round(100 * u / elapsed, 1) for u in used],
            "rss_mib": cluster.rss_mib(c)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cluster.common_args(ap, rounds=1)
    ap.add_argument("--queues", type=int, default=1000)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--binary", action="append", default=[])
    a = ap.parse_args()
    if a.binary:
        kinds = [(f"warren-3 {b}", (lambda b=b: cluster.WarrenCluster(b))) for b in a.binary]
        if not a.skip_rabbitmq:
            compare.ensure_rabbitmq()
            kinds.append(("rabbitmq-3", cluster.RabbitCluster))
        os.makedirs(a.out, exist_ok=True)
    else:
        _, _, kinds = cluster.prepare(a, "idle", single=False)
    results = {}
    for name, start in cluster.rounds(kinds, a.rounds, log):
        c = start()
        try:
            r = one_round(c, a.queues, a.settle, a.window)
        finally:
            c.stop()
        log(f"{name}: {r}")
        results.setdefault(name, []).append(r)
    summary = {}
    for name, rs in results.items():
        per_node = [statistics.median(r["cpu_percent"][i] for r in rs) for i in range(3)]
        summary[name] = {"cpu_percent_per_node": per_node,
                         "rss_mib_per_node": rs[-1]["rss_mib"], "rounds": rs}
        print(f"{name}: CPU % of a core per node {per_node}, RSS MiB {rs[-1]['rss_mib']}")
    out = {"queues": a.queues, "settle_s": a.settle, "window_s": a.window,
           "date": time.strftime("%Y-%m-%d"), "results": summary}
    with open(os.path.join(a.out, "idle.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
