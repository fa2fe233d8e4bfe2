#!/usr/bin/env python3
"""Throughput around a quorum queue's leader killed mid-run: warren against RabbitMQ, each
as 3 nodes on this machine.

    benches/failover.py [--rounds 3] [--duration 30] [--kill-at 10] [--out benches/results]

The quorum queue is declared on node 1 (so its first leader is there); the producer is on
node 2 and the consumer on node 3 (persistent 1 KiB, confirms with a window of 1000, ack
multiple 100). At --kill-at seconds node 1 gets SIGKILL; the run goes on against the two
survivors. perf records consumed and confirmed counts every 100 ms; from them:

- before: the consumed rate from 3 s to the kill;
- stall: the longest time after the kill with nothing consumed, and when it began;
- recovered: the time from the kill to the end of the first 1 s window that consumes at
  least 80% of `before` (1,000 ms at best: the window starting at the kill);
- after: the consumed rate over the last 10 s (two nodes left);
- nacked: publishes nacked (none are lost: the tests check that; this is speed only).

Prints a table of medians and writes failover.json to --out.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402

PERF_ARGS = ("--size 1024 --persistent --durable --queue-arg x-queue-type=quorum "
             "--confirm 1000 --multiple-ack 100 --prefetch 1000 --timeline-ms 100")


def log(msg):
    print(f"failover: {msg}", file=sys.stderr, flush=True)


def analyse(timeline, kill_ms, end_ms):
    """Figures from perf's rows of [ms, consumed, confirmed, nacked]."""
    def at(ms):
        # The last row at or before `ms`.
        best = timeline[0]
        for row in timeline:
            if row[0] > ms:
                break
            best = row
        return best

    a, k = at(3000), at(kill_ms)
    before = (k[1] - a[1]) * 1000.0 / max(1, k[0] - a[0])
    stall, stall_at, recovered, last, stall_from = 0, None, None, None, kill_ms
    for row in timeline:
        if row[0] < kill_ms:
            continue
        if last is not None and row[1] == last[1]:
            if row[0] - stall_from > stall:
                stall, stall_at = row[0] - stall_from, stall_from - kill_ms
        else:
            stall_from = row[0]
        last = row
        w = at(row[0] - 1000)
        rate = (row[1] - w[1]) * 1000.0 / max(1, row[0] - w[0])
        if recovered is None and row[0] >= kill_ms + 1000 and rate >= 0.8 * before:
            recovered = row[0] - kill_ms
    e, s = at(end_ms), at(end_ms - 10_000)
    after = (e[1] - s[1]) * 1000.0 / max(1, e[0] - s[0])
    return {"before": before, "stall_ms": stall, "stall_at_ms": stall_at,
            "recovered_ms": recovered, "after": after,
            "nacked": timeline[-1][3]}


def run(perf, c, duration, kill_at, workdir):
    out = os.path.join(workdir, "perf.json")
    cmd = [perf, "--url", c.urls[0], "--producer-url", c.urls[1], "--consumer-url", c.urls[2],
           "--duration", str(duration), "--json", out, "--queue", "failover"] + PERF_ARGS.split()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    killed = []

    def kill():
        killed.append(time.time())
        os.killpg(c.procs[0].pid, signal.SIGKILL)

    killer = threading.Timer(kill_at, kill)
    killer.start()
    try:
        p.wait(timeout=duration * 10 + 300)
    finally:
        killer.cancel()
    if p.returncode != 0 or not killed:
        raise RuntimeError(f"perf exited with {p.returncode} (killed: {bool(killed)})")
    with open(out) as f:
        r = json.load(f)
    kill_ms = int(killed[0] * 1000) - r["started_unix_ms"]
    # The whole timeline (300 rows of [ms, consumed, confirmed, nacked]), to see the dip.
    return analyse(r["timeline"], kill_ms, int(r["seconds"] * 1000)) | {
        "kill_ms": kill_ms, "timeline": r["timeline"]}


def k_summary(r):
    """A run's figures without its timeline."""
    return {k: v for k, v in r.items() if k != "timeline"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cluster.common_args(ap, rounds=3)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--kill-at", type=float, default=10.0)
    a = ap.parse_args()
    perf, workdir, kinds = cluster.prepare(a, "failover", single=False)
    runs = {k: [] for k, _ in kinds}
    for name, start in cluster.rounds(kinds, a.rounds, log):
        c = start()
        try:
            time.sleep(2)
            r = run(perf, c, a.duration, a.kill_at, workdir)
            runs[name].append(r)
            log(f"  {name}: {k_summary(r)}")
        finally:
            c.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    keys = ("before", "stall_ms", "stall_at_ms", "recovered_ms", "after", "nacked")
    table = {}
    for name, rs in runs.items():
        table[name] = {}
        for k in keys:
            vals = [r[k] for r in rs if r[k] is not None]
            # A run that never got back to 80% counts as the longest.
            table[name][k] = statistics.median(vals) if len(vals) == len(rs) else None
    with open(os.path.join(a.out, "failover.json"), "w") as f:
        json.dump({"rounds": a.rounds, "duration": a.duration, "kill_at": a.kill_at,
                   "perf_args": PERF_ARGS, "table": table, "runs": runs}, f, indent=2)
    print(f"\nmedians of {a.rounds} rounds; leader (node 1) killed at {a.kill_at:g} s of "
          f"{a.duration:g} s; producer on node 2, consumer on node 3\n")
    print("| broker | before (msg/s) | longest stall (ms) | its start after the kill (ms) "
          "| back to 80% (ms) | after (msg/s) | nacked |")
    print("|---|---|---|---|---|---|---|")
    for name in runs:
        t = table[name]
        rec = "never" if t["recovered_ms"] is None else f"{t['recovered_ms']:,.0f}"
        at = "-" if t["stall_at_ms"] is None else f"{t['stall_at_ms']:,.0f}"
        print(f"| {name} | {t['before']:,.0f} | {t['stall_ms']:,.0f} | {at} | {rec} | "
              f"{t['after']:,.0f} | {t['nacked']:,.0f} |")


if __name__ == "__main__":
    main()
