#!/usr/bin/env python3
"""Recovery time of a quorum queue holding 1M messages: warren against RabbitMQ, after every
node of the broker was killed with SIGKILL.

    benches/recovery.py [--messages 1000000] [--size 1024] [--rounds 1] [--out benches/results]

For each broker (warren as one node and as 3 nodes, RabbitMQ 3.10 as 3 nodes, all on this
machine): declare a quorum queue on node 1 and fill it through node 2 with persistent
messages and confirms (window 1000) until every one is confirmed; then SIGKILL every node
at once and start them all again on their data. Reported:

- fill: the publish rate while filling (confirmed msg/s);
- ports: seconds from the restart until every node accepts AMQP connections;
- ready: seconds from the restart until node 1 answers a passive declare with the full
  count and hands out a message with basic.get (the queue is usable again);
- RSS per node after recovery, and the bytes the broker's data directories take on disk
  (perf's bodies are one repeated byte: RocksDB compresses them to almost nothing, so the
  disk figure says little about real payloads).

Prints a table of medians and writes recovery.json to --out. Needs pika (installed with pip
if missing).
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402


def log(msg):
    print(f"recovery: {msg}", file=sys.stderr, flush=True)


def ensure_pika():
    try:
        import pika  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "pika>=1.3,<2"],
                       check=True)


def disk_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def fill(perf, c, n, size, workdir):
    """Queue n messages through node 2 and return (seconds, the perf process holding)."""
    cmd = [perf, "--url", c.urls[0], "--producer-url", c.urls[1], "--queue", "recovery",
           "--fill", str(n), "--size", str(size), "--persistent", "--durable",
           "--queue-arg", "x-queue-type=quorum", "--confirm", "1000",
           "--json", os.path.join(workdir, "fill.json")]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line.startswith("READY"):
        p.kill()
        raise RuntimeError(f"the filler did not get ready: {line!r}")
    return time.monotonic() - t0, p


def wait_ready(url, n, deadline):
    """Poll node 1 until the queue answers with n messages and a get hands one out."""
    import pika
    params = pika.URLParameters(url)
    params.socket_timeout = 5
    params.blocked_connection_timeout = 5
    while time.monotonic() < deadline:
        try:
            conn = pika.BlockingConnection(params)
            try:
                ch = conn.channel()
                count = ch.queue_declare("recovery", passive=True).method.message_count
                if count == n:
                    method, _, _ = ch.basic_get("recovery", auto_ack=False)
                    if method is not None:
                        return
                else:
                    log(f"  node 1 counts {count:,} of {n:,}")
            finally:
                try:
                    conn.close()
                except Exception:
                    pass
        except Exception as e:  # not up yet, queue not yet recovered, node still syncing
            log(f"  not ready: {type(e).__name__} {e}")
        time.sleep(0.1)
    raise RuntimeError("the queue did not come back in time")


def one(name, start, perf, a, workdir):
    c = start()
    try:
        time.sleep(2)
        secs, filler = fill(perf, c, a.messages, a.size, workdir)
        log(f"  {name}: filled {a.messages:,} in {secs:.1f} s")
        for p in c.procs:
            os.killpg(p.pid, signal.SIGKILL)
        for p in c.procs:
            cluster.wait_group_gone(p)
        filler.kill()
        filler.wait()
        t0 = time.monotonic()
        c.restart_all()
        ports = time.monotonic() - t0
        wait_ready(c.urls[0], a.messages, t0 + 1800)
        ready = time.monotonic() - t0
        r = {"fill_per_sec": a.messages / secs, "ports_s": ports, "ready_s": ready,
             "rss_mib": cluster.rss_mib(c), "disk_mib": disk_bytes(c.dir) / 2**20}
        log(f"  {name}: {r}")
        return r
    finally:
        c.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cluster.common_args(ap, rounds=1)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--only", action="append", default=[],
                    help="run only this broker (warren-1, warren-3, rabbitmq-3); repeatable")
    a = ap.parse_args()
    ensure_pika()
    perf, workdir, kinds = cluster.prepare(a, "recovery")
    if a.only:
        kinds = [k for k in kinds if k[0] in a.only]
    runs = {k: [] for k, _ in kinds}
    for name, start in cluster.rounds(kinds, a.rounds, log):
        runs[name].append(one(name, start, perf, a, workdir))
    table = {}
    for name, rs in runs.items():
        table[name] = {k: statistics.median(r[k] for r in rs)
                       for k in ("fill_per_sec", "ports_s", "ready_s", "disk_mib")}
        table[name]["rss_mib"] = statistics.median(max(r["rss_mib"]) for r in rs)
    name = "recovery" + "".join(f"-{k}" for k in a.only)
    with open(os.path.join(a.out, f"{name}.json"), "w") as f:
        json.dump({"messages": a.messages, "size": a.size, "rounds": a.rounds,
                   "table": table, "runs": runs}, f, indent=2)
    print(f"\n{a.messages:,} persistent {a.size} B messages in one quorum queue; every node "
          f"killed (SIGKILL) and started again; medians of {a.rounds} round(s)\n")
    print("| broker | fill (msg/s) | ports up (s) | queue ready (s) | RSS, largest node (MiB) "
          "| on disk, all nodes (MiB) |")
    print("|---|---|---|---|---|---|")
    for name, t in table.items():
        print(f"| {name} | {t['fill_per_sec']:,.0f} | {t['ports_s']:.1f} | {t['ready_s']:.1f} | "
              f"{t['rss_mib']:,.0f} | {t['disk_mib']:,.0f} |")


if __name__ == "__main__":
    main()
