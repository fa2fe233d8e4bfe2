#!/usr/bin/env python3
"""A quorum queue member far behind catches up: time and memory, warren against RabbitMQ.

    benches/catchup.py [--messages 16384] [--size 65536] [--rounds 1] [--out benches/results]

For each broker (3 nodes on this machine: warren, RabbitMQ 3.10): declare a quorum queue on
node 1, stop node 3 (warren: SIGKILL; RabbitMQ: `rabbitmqctl stop_app`, as a killed Erlang
node would be marked down and its restart is what is measured here), fill the queue through
node 2 with persistent messages and confirms (window 1000), then start node 3 again and wait
until its member has every entry (warren: node 1's status API shows node 3's lag at 0;
RabbitMQ: `rabbitmq-queues quorum_status` shows node 3's commit index at the leader's).
With 1 GiB queued (the default), warren's leader has compacted its log by then and sends
node 3 a snapshot, its messages streamed ahead of it; RabbitMQ's sends its own.
Reported: the fill rate, the seconds from node 3's start until it caught up, and each
node's resident memory before node 3 starts and its peak while it catches up (sampled every
50 ms); for warren also how many snapshots node 1 started sending (1 unless one failed).

Writes catchup.json to --out.
"""

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402

QUEUE = "catchup"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
QUEUES = "/usr/lib/rabbitmq/bin/rabbitmq-queues"


def log(msg):
    print(f"catchup: {msg}", file=sys.stderr, flush=True)


class Warren(cluster.WarrenCluster):
    """cluster.WarrenCluster, with the status API on every node."""

    def __init__(self, binary):
        super().__init__(binary, http=True)

    def stop_node3(self):
        os.killpg(self.procs[2].pid, signal.SIGKILL)
        cluster.wait_group_gone(self.procs[2])

    def start_node3(self):
        self.procs[2] = self._popen(2)

    def sendings(self):
        """Snapshots node 1 started sending (one is enough for node 3 to catch up)."""
        with open(f"{self.dir}-n1.log") as f:
            return sum("sending a snapshot" in line for line in f)

    def lag3(self):
        """Node 3's lag in entries as node 1 (the leader) sees it; None if unknown."""
        url = f"http://{self.hosts[0]}:{self.http[0]}/api/queues/%2f/{QUEUE}"
        req = urllib.request.Request(url, headers={
            "Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
        with urllib.request.urlopen(req, timeout=5) as r:
            info = json.load(r)
        for m in (info.get("raft") or {}).get("lag", []):
            if m["node"] == 3:
                return m["entries"]
        return None


class Rabbit(cluster.RabbitCluster):
    def ctl(self, i, *args):
        return subprocess.run([CTL, "-n", self.env[i]["RABBITMQ_NODENAME"], *args],
                              env=self.env[i], check=True, capture_output=True, text=True,
                              timeout=300)

    def stop_node3(self):
        self.ctl(2, "stop_app")

    def start_node3(self):
        subprocess.Popen([CTL, "-n", self.env[2]["RABBITMQ_NODENAME"], "start_app"],
                         env=self.env[2], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def lag3(self):
        out = subprocess.run([QUEUES, "-n", self.env[0]["RABBITMQ_NODENAME"], "quorum_status",
                              QUEUE, "--formatter", "json"], env=self.env[0],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            return None
        rows = json.loads(out.stdout)
        name3 = self.env[2]["RABBITMQ_NODENAME"]
        leader = [r for r in rows if r.get("Raft State") == "leader"]
        mine = [r for r in rows if r.get("Node Name") == name3]
        if not leader or not mine or not isinstance(mine[0].get("Commit Index"), int):
            return None
        return max(0, leader[0]["Commit Index"] - mine[0]["Commit Index"])


def fill(perf, c, n, size, workdir):
    """Queue n messages through node 2 (the queue declared on node 1); returns msg/s."""
    cmd = [perf, "--url", c.urls[0], "--producer-url", c.urls[1], "--queue", QUEUE,
           "--fill", str(n), "--size", str(size), "--persistent", "--durable",
           "--queue-arg", "x-queue-type=quorum", "--confirm", "1000",
           "--json", os.path.join(workdir, "fill.json")]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    secs = time.monotonic() - t0
    p.kill()
    p.wait()
    if not line.startswith("READY"):
        raise RuntimeError(f"the filler did not get ready: {line!r}")
    return n / secs


def one(name, start, perf, a, workdir):
    c = start()
    try:
        # The queue exists with 3 members before node 3 goes.
        fill(perf, c, 1, a.size, workdir)
        c.stop_node3()
        rate = fill(perf, c, a.messages, a.size, workdir)
        log(f"  {name}: filled {a.messages:,} at {rate:,.0f} msg/s")
        before = cluster.rss_mib(c)
        peak = list(before)
        t0 = time.monotonic()
        c.start_node3()
        last_poll, lag = 0.0, None
        while True:
            now = time.monotonic()
            if now - t0 > 1800:
                raise RuntimeError("node 3 did not catch up in time")
            peak = [max(p, r) for p, r in zip(peak, cluster.rss_mib(c))]
            if now - last_poll >= 0.5:
                last_poll = now
                try:
                    lag = c.lag3()
                except Exception as e:  # node 1 busy, or node 3 not known yet
                    log(f"  lag unknown: {type(e).__name__} {e}")
                    lag = None
                if lag == 0:
                    break
            time.sleep(0.05)
        secs = time.monotonic() - t0
        r = {"fill_per_sec": rate, "catchup_s": secs, "rss_before_mib": before,
             "rss_peak_mib": peak}
        if hasattr(c, "sendings"):
            r["snapshots_sent"] = c.sendings()
        log(f"  {name}: {r}")
        return r
    finally:
        c.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cluster.common_args(ap, rounds=1)
    ap.add_argument("--messages", type=int, default=16384)
    ap.add_argument("--size", type=int, default=65536)
    ap.add_argument("--warren", help="this warren binary instead of the tree's (to compare "
                    "two versions)")
    a = ap.parse_args()
    perf, workdir, kinds = cluster.prepare(a, "catchup", single=False)
    binary = a.warren or cluster.compare.build()[0]
    starts = {"warren-3": lambda: Warren(binary), "rabbitmq-3": Rabbit}
    kinds = [(k, starts[k]) for k, _ in kinds]
    runs = {k: [] for k, _ in kinds}
    for name, start in cluster.rounds(kinds, a.rounds, log):
        runs[name].append(one(name, start, perf, a, workdir))
    with open(os.path.join(a.out, "catchup.json"), "w") as f:
        json.dump({"messages": a.messages, "size": a.size, "rounds": a.rounds,
                   "warren": binary, "runs": runs}, f, indent=2)
    mib = a.messages * a.size / 2**20
    print(f"\n{a.messages:,} persistent messages of {a.size:,} B ({mib:,.0f} MiB) in one "
          f"quorum queue while node 3 was down; node 3 started again\n")
    print("| broker | fill (msg/s) | catch-up (s) | RSS before, nodes 1/2/3 (MiB) "
          "| peak RSS while catching up (MiB) |")
    print("|---|---|---|---|---|")
    for name, rs in runs.items():
        for r in rs:
            print(f"| {name} | {r['fill_per_sec']:,.0f} | {r['catchup_s']:.1f} | "
                  f"{' / '.join(f'{x:,.0f}' for x in r['rss_before_mib'])} | "
                  f"{' / '.join(f'{x:,.0f}' for x in r['rss_peak_mib'])} |")


if __name__ == "__main__":
    main()
