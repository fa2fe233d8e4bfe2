#!/usr/bin/env python3
"""A 3-node warren cluster against one warren node and a 3-node RabbitMQ cluster.

    benches/cluster.py [--rounds 3] [--duration 10] [--out benches/results] [--quorum]

Every broker runs on this machine. The warren cluster runs on 127.0.0.2-4; RabbitMQ 3.10
(from Debian, installed if missing) runs three nodes joined with `rabbitmqctl
join_cluster`. In each scenario the queue is a classic queue declared on node 1 (its
home), the producer connects to node 2 and the consumer to node 3; against the single
node, all three are the same node. Prints a table of medians (msg/s, p50/p99 end-to-end
latency) and writes cluster.json to --out. With --quorum the queue is a quorum queue
(x-queue-type: quorum, declared on node 1, so its first leader is there) and the results
go to quorum.json. --only q1000 runs one scenario (results in quorum-q1000.json).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (the brokers, builds and helpers are shared)

SCENARIOS = [
    ("c1", "transient 16 B, auto-ack", "--size 16 --auto-ack"),
    ("c2", "persistent 1 KiB, durable queue, confirms (window 1000), ack multiple 100",
     "--size 1024 --persistent --durable --confirm 1000 --multiple-ack 100 --prefetch 1000"),
    ("c3", "latency at a fixed 10k msg/s, transient 16 B, auto-ack",
     "--size 16 --auto-ack --rate 10000"),
]

QUORUM_SCENARIOS = [
    ("q1", "quorum queue, persistent 1 KiB, confirms (window 1000), ack multiple 100",
     "--size 1024 --persistent --durable --queue-arg x-queue-type=quorum --confirm 1000 "
     "--multiple-ack 100 --prefetch 1000"),
    ("q10", "10 quorum queues behind a fanout (deliveries/s counted), persistent 1 KiB, "
     "confirms (window 1000), a consumer on each, ack multiple 100",
     "--size 1024 --persistent --durable --queue-arg x-queue-type=quorum --confirm 1000 "
     "--multiple-ack 100 --prefetch 1000 --fanout 10"),
    ("qbig", "quorum queue, persistent 1 MiB, confirms (window 64), ack multiple 8",
     "--size 1048576 --persistent --durable --queue-arg x-queue-type=quorum --confirm 64 "
     "--multiple-ack 8 --prefetch 64"),
    ("qna", "quorum queue, persistent 1 KiB, confirms (window 1000), a no-ack consumer",
     "--size 1024 --persistent --durable --queue-arg x-queue-type=quorum --confirm 1000 "
     "--auto-ack"),
    ("q1000", "1,000 quorum queues, persistent 1 KiB, confirms (window 1000), the producer "
     "publishing to each in turn, one consumer on all of them, ack multiple 100",
     "--size 1024 --persistent --durable --queue-arg x-queue-type=quorum --confirm 1000 "
     "--multiple-ack 100 --prefetch 100 --queues 1000"),
]


def log(msg):
    print(f"cluster: {msg}", file=sys.stderr, flush=True)


def free_port(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host, port, procs, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a broker exited with {p.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listening on {host}:{port} after {timeout}s")


def group_states(pgid):
    """The states (R, S, Z, ...) of the processes in a process group."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                out.append(fields[0])
        except (OSError, IndexError, ValueError):
            continue
    return out


def wait_group_gone(p, timeout=60):
    """Reap a node's group leader, then wait until no process of its group is left (a
    killed RabbitMQ's beam can outlive its shell script for a moment, holding its ports)."""
    p.wait()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(state != "Z" for state in group_states(p.pid)):
            return
        time.sleep(0.05)
    raise RuntimeError(f"process group {p.pid} still alive after SIGKILL")


class Cluster:
    """Brokers with a URL per node; urls[0] is the queue's home."""

    def __init__(self, name):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix=f"cluster-{name}-")
        self.procs = []
        self.urls = []
        # How each node was started (argv and Popen's keywords), to start it again.
        self.specs = []
        self.ports = []

    def spawn(self, argv, log_path, **kw):
        """Start a node in a process group of its own (RabbitMQ's beam runs under a shell
        script: the group is the whole node); its output goes to `log_path`, appended."""
        self.specs.append((argv, log_path, kw))
        self.procs.append(self._popen(len(self.specs) - 1))

    def _popen(self, i):
        argv, log_path, kw = self.specs[i]
        return subprocess.Popen(argv, stdout=open(log_path, "a"), stderr=subprocess.STDOUT,
                                start_new_session=True, **kw)

    def restart_all(self):
        """Start every node again on its data (all at once: RabbitMQ nodes that were killed
        together wait for each other), then wait for their AMQP ports."""
        self.procs = [self._popen(i) for i in range(len(self.specs))]
        for host, port in self.ports:
            wait_port(host, port, self.procs, timeout=600)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class WarrenSingle(Cluster):
    def __init__(self, binary):
        super().__init__("warren-1")
        port = free_port("127.0.0.1")
        self.spawn([binary, "--listen", f"127.0.0.1:{port}", "--data-dir", f"{self.dir}/data"],
                   f"{self.dir}.log")
        self.ports = [("127.0.0.1", port)]
        wait_port("127.0.0.1", port, self.procs)
        self.urls = [f"amqp://guest:guest@127.0.0.1:{port}/%2f"] * 3


class WarrenCluster(Cluster):
    def __init__(self, binary, http=False):
        """Three nodes; with `http`, each serves the status API (its ports in self.http)."""
        super().__init__("warren-3")
        hosts = [f"127.0.0.{2 + i}" for i in range(3)]
        links = [free_port(h) for h in hosts]
        amqp = [free_port(h) for h in hosts]
        self.hosts = hosts
        self.http = [free_port(h) for h in hosts] if http else []
        peers = []
        for i, h in enumerate(hosts):
            peers += ["--peer", f"{i + 1}={h}:{links[i]}"]
        for i, h in enumerate(hosts):
            api = ["--http-listen", f"{h}:{self.http[i]}"] if http else []
            self.spawn([binary, "--node-id", str(i + 1), "--listen", f"{h}:{amqp[i]}",
                        "--cluster-listen", f"{h}:{links[i]}", "--data-dir",
                        f"{self.dir}/n{i + 1}"] + api + peers,
                       f"{self.dir}-n{i + 1}.log")
        self.ports = list(zip(hosts, amqp))
        for h, p in zip(hosts, amqp):
            wait_port(h, p, self.procs)
        self.urls = [f"amqp://guest:guest@{h}:{p}/%2f" for h, p in zip(hosts, amqp)]


class RabbitCluster(Cluster):
    def __init__(self):
        super().__init__("rabbitmq-3")
        ports = [compare.free_port() for _ in range(3)]
        names = [f"cl{i + 1}x{ports[0]}@localhost" for i in range(3)]
        self.env = []
        for i, port in enumerate(ports):
            d = f"{self.dir}/n{i + 1}"
            os.makedirs(d)
            env = dict(os.environ)
            env.update({
                # One HOME: the nodes share the Erlang cookie.
                "HOME": self.dir,
                "RABBITMQ_NODENAME": names[i],
                "RABBITMQ_NODE_PORT": str(port),
                "RABBITMQ_DIST_PORT": str(compare.free_port()),
                "RABBITMQ_MNESIA_BASE": f"{d}/mnesia",
                "RABBITMQ_LOG_BASE": f"{d}/log",
                "RABBITMQ_ENABLED_PLUGINS_FILE": f"{d}/enabled_plugins",
                "RABBITMQ_CONFIG_FILE": f"{d}/rabbitmq",
            })
            self.env.append(env)
            self.spawn(["/usr/lib/rabbitmq/bin/rabbitmq-server"], f"{d}.log", cwd=d, env=env)
            wait_port("127.0.0.1", port, self.procs)
        for i in (1, 2):
            for step in (["stop_app"], ["join_cluster", names[0]], ["start_app"]):
                subprocess.run(["/usr/lib/rabbitmq/bin/rabbitmqctl", "-n", names[i]] + step,
                               env=self.env[i],
                               check=True, capture_output=True, timeout=120)
            wait_port("127.0.0.1", ports[i], self.procs)
        self.urls = [f"amqp://guest:guest@127.0.0.1:{p}/%2f" for p in ports]
        self.ports = [("127.0.0.1", p) for p in ports]


def rss_mib(c):
    """Each node's resident memory now (its whole process group: RabbitMQ's beam runs under
    a shell script), in MiB."""
    out = []
    for p in c.procs:
        total = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                if os.getpgid(int(pid)) != p.pid:
                    continue
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except (OSError, ValueError):
                continue
        out.append(round(total / 1024, 1))
    return out


def run(perf, c, args, duration, workdir):
    out = os.path.join(workdir, "perf.json")
    cmd = [perf, "--url", c.urls[0], "--producer-url", c.urls[1], "--consumer-url", c.urls[2],
           "--duration", str(duration), "--json", out, "--queue", "cluster"] + args.split()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=duration * 10 + 300)
    with open(out) as f:
        r = json.load(f)
    lat = r.get("latency_us") or {}
    return {"msg_per_sec": r.get("consumed_per_sec") or 0.0, "p50_us": lat.get("p50") or 0.0,
            "p99_us": lat.get("p99") or 0.0, "rss_mib": rss_mib(c), "raw": r}


def common_args(ap, rounds):
    """The options every bench in benches/ that runs clusters takes."""
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--out", default=os.path.join(compare.REPO, "benches", "results"))
    ap.add_argument("--skip-rabbitmq", action="store_true")


def prepare(a, prefix, single=True):
    """What such a bench does first: SIGTERM exits, RabbitMQ installed (unless skipped),
    warren and perf built, --out made. Returns (perf, a scratch directory, the brokers as
    (name, start) pairs: warren-1 if `single`, warren-3, rabbitmq-3)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not a.skip_rabbitmq:
        compare.ensure_rabbitmq()
    warren_bin, perf = compare.build()
    os.makedirs(a.out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix=f"{prefix}-")
    kinds = [("warren-1", lambda: WarrenSingle(warren_bin))] if single else []
    kinds.append(("warren-3", lambda: WarrenCluster(warren_bin)))
    if not a.skip_rabbitmq:
        kinds.append(("rabbitmq-3", RabbitCluster))
    return perf, workdir, kinds


def rounds(kinds, n, log):
    """(name, start) for every broker of every round; each round runs them in the reverse
    order of the one before, so none always runs first."""
    for rnd in range(n):
        for name, start in (kinds if rnd % 2 == 0 else list(reversed(kinds))):
            log(f"round {rnd + 1}/{n}: {name}")
            yield name, start


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common_args(ap, rounds=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--quorum", action="store_true", help="quorum queues instead of classic")
    ap.add_argument("--only", action="append", default=[],
                    help="run only this scenario (q1000, c2, ...); repeatable")
    a = ap.parse_args()
    scenarios = QUORUM_SCENARIOS if a.quorum else SCENARIOS
    if a.only:
        scenarios = [s for s in scenarios if s[0] in a.only]
    perf, workdir, kinds = prepare(a, "cluster")
    runs = {(s[0], k[0]): [] for s in scenarios for k in kinds}
    for name, start in rounds(kinds, a.rounds, log):
        c = start()
        try:
            time.sleep(2)
            for sid, title, args in scenarios:
                r = run(perf, c, args, a.duration, workdir)
                runs[(sid, name)].append(r)
                log(f"  ({sid}) {name}: {r['msg_per_sec']:,.0f} msg/s, "
                    f"p50 {r['p50_us']:,.0f} us, p99 {r['p99_us']:,.0f} us, "
                    f"RSS after {r['rss_mib']} MiB")
        finally:
            c.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    table = []
    for sid, title, args in scenarios:
        row = {"scenario": sid, "title": title, "perf_args": args}
        for name, _ in kinds:
            rs = runs[(sid, name)]
            row[name] = {k: statistics.median(r[k] for r in rs)
                         for k in ("msg_per_sec", "p50_us", "p99_us")}
            # The largest node's resident memory after the scenario, median over rounds.
            row[name]["rss_mib"] = statistics.median(max(r["rss_mib"]) for r in rs)
        table.append(row)
    name = "quorum" if a.quorum else "cluster"
    if a.only:
        name += "-" + "-".join(a.only)
    with open(os.path.join(a.out, f"{name}.json"), "w") as f:
        json.dump({"rounds": a.rounds, "duration": a.duration, "table": table,
                   "runs": {f"{s}/{n}": v for (s, n), v in runs.items()}}, f, indent=2)
    print(f"\nmedians of {a.rounds} rounds, {a.duration:g} s each; queue on node 1, "
          "producer on node 2, consumer on node 3\n")
    names = [n for n, _ in kinds]
    print("| scenario | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for row in table:
        cells = [f"{row[n]['msg_per_sec']:,.0f} msg/s (p50 {row[n]['p50_us']:,.0f} us, "
                 f"p99 {row[n]['p99_us']:,.0f} us; RSS {row[n]['rss_mib']} MiB)" for n in names]
        print(f"| ({row['scenario']}) {row['title']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
