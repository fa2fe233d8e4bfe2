#!/usr/bin/env python3
"""warren against RabbitMQ, side by side, on this machine.

    benches/compare.py [--rounds 3] [--duration 10] [--only 1,6,8b] [--out benches/results]

Installs RabbitMQ from Debian if it is missing, builds warren and the load generator
(benches/perf), starts both brokers on free ports with their own temporary data
directories, and runs every scenario against each, alternating which goes first
(A B, B A, ...), for --rounds rounds. Prints one table of medians with the ratio
warren/RabbitMQ, writes compare.json (every run) and compare.png (the chart) to --out.

Throughput is what the consumers received (or confirmed/committed where nothing is
consumed); latency is the end-to-end time from the producer's send to the consumer's read;
memory is the broker's resident set (the whole process tree: beam.smp for RabbitMQ).
The generator shares the two cores with the broker: its CPU is in the JSON.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (id, title, perf arguments, metric, unit, better)
SCENARIOS = [
    ("1", "transient 16 B, 1 producer, 1 consumer, auto-ack",
     "--size 16 --auto-ack", "consumed_per_sec", "msg/s", "higher"),
    ("2", "transient 1 KiB, 1 producer, 1 consumer, auto-ack",
     "--size 1024 --auto-ack", "consumed_per_sec", "msg/s", "higher"),
    ("3", "persistent 1 KiB, durable queue, confirms (window 1000), ack multiple 100",
     "--size 1024 --persistent --durable --confirm 1000 --multiple-ack 100 --prefetch 1000",
     "consumed_per_sec", "msg/s", "higher"),
    ("4", "as (3) with 4 producers and 4 consumers",
     "--size 1024 --persistent --durable --confirm 1000 --multiple-ack 100 --prefetch 1000 "
     "--producers 4 --consumers 4", "consumed_per_sec", "msg/s", "higher"),
    ("5", "fanout 1 KiB to 10 queues, a consumer each, auto-ack",
     "--size 1024 --auto-ack --fanout 10", "consumed_per_sec", "msg/s", "higher"),
    ("6", "latency at a fixed 10k msg/s, 16 B, auto-ack (p99)",
     "--size 16 --auto-ack --rate 10000", "p99", "us", "lower"),
    ("7", "1-message transactions (persistent, durable queue)",
     "--size 16 --persistent --durable --tx", "confirmed_per_sec", "commits/s", "higher"),
    ("8a", "idle RSS", None, "rss_mib", "MiB", "lower"),
    ("8b", "RSS with 1M queued 16 B transient messages",
     "--fill 1000000 --size 16 --confirm 1000", "rss_mib", "MiB", "lower"),
    ("8c", "RSS with 1M queued 16 B persistent messages (durable queue)",
     "--fill 1000000 --size 16 --confirm 1000 --persistent --durable", "rss_mib", "MiB", "lower"),
    ("9", "1,000 connections with a channel and a consumer: RSS per connection",
     "--idle-connections 1000", "kib_per_conn", "KiB", "lower"),
]


def log(msg):
    print(f"compare: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def tree_pids(root):
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_kib(root):
    total = 0
    for p in tree_pids(root):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_seconds(root):
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in tree_pids(root):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / tck


class Broker:
    def __init__(self, name):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix=f"compare-{name}-")
        self.port = free_port()
        self.proc = None

    @property
    def url(self):
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2f"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Warren(Broker):
    def __init__(self, binary):
        super().__init__("warren")
        self.proc = subprocess.Popen(
            [binary, "--listen", f"127.0.0.1:{self.port}", "--data-dir", f"{self.dir}/data"],
            stdout=subprocess.DEVNULL, stderr=open(f"{self.dir}.log", "w"),
            start_new_session=True)
        wait_port(self.port, self.proc)


class RabbitMQ(Broker):
    def __init__(self):
        super().__init__("rabbitmq")
        env = dict(os.environ)
        env.update({
            "HOME": self.dir,
            "RABBITMQ_NODENAME": f"compare{self.port}@localhost",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": f"{self.dir}/mnesia",
            "RABBITMQ_LOG_BASE": f"{self.dir}/log",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{self.dir}/enabled_plugins",
            "RABBITMQ_CONFIG_FILE": f"{self.dir}/rabbitmq",
        })
        self.proc = subprocess.Popen(
            ["/usr/lib/rabbitmq/bin/rabbitmq-server"], cwd=self.dir, env=env,
            stdout=open(f"{self.dir}.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_port(self.port, self.proc)


def ensure_rabbitmq():
    if os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server"):
        return
    log("installing rabbitmq-server from Debian")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "rabbitmq-server"], check=True, env=env)
    # The package starts a system broker on 5672; ours run on their own ports.
    subprocess.run(["sh", "-c", "service rabbitmq-server stop || rabbitmqctl stop"],
                   check=False, capture_output=True)


def build():
    log("building warren and the load generator (release)")
    subprocess.run(["cargo", "build", "--release", "--bin", "warren"], cwd=REPO, check=True)
    out = subprocess.run(
        ["cargo", "bench", "--bench", "perf", "--no-run", "--message-format=json"],
        cwd=REPO, check=True, capture_output=True, text=True).stdout
    perf = None
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
                and msg["target"]["name"] == "perf":
            perf = msg["executable"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    return os.path.join(target, "release", "warren"), perf


def run_perf(perf, broker, args, duration, workdir):
    out_json = os.path.join(workdir, "perf.json")
    cmd = [perf, "--url", broker.url, "--duration", str(duration), "--json", out_json,
           "--queue", "compare"] + args.split()
    cpu0, t0 = cpu_seconds(broker.proc.pid), time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=duration * 10 + 300)
    cpu = cpu_seconds(broker.proc.pid) - cpu0
    with open(out_json) as f:
        r = json.load(f)
    r["broker_cpu_pct"] = 100 * cpu / (time.monotonic() - t0)
    return r


def run_held(perf, broker, args, workdir):
    """--fill / --idle-connections: read the broker's RSS while the generator holds."""
    before = rss_kib(broker.proc.pid)
    cmd = [perf, "--url", broker.url, "--queue", "compare",
           "--json", os.path.join(workdir, "held.json")] + args.split()
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line.startswith("READY"):
        p.kill()
        raise RuntimeError(f"generator did not get ready: {line!r}")
    # Let the broker finish what the last confirms released (e.g. unsynced index writes).
    time.sleep(2)
    held = rss_kib(broker.proc.pid)
    p.stdin.close()
    p.wait(timeout=300)
    return {"rss_before_kib": before, "rss_kib": held, "rss_mib": held / 1024}


def measure(sid, perf, broker, args, duration, workdir):
    if sid == "8a":
        kib = rss_kib(broker.proc.pid)
        return {"rss_kib": kib, "rss_mib": kib / 1024}
    if sid.startswith("8"):
        return run_held(perf, broker, args, workdir)
    if sid == "9":
        r = run_held(perf, broker, args, workdir)
        r["kib_per_conn"] = (r["rss_kib"] - r["rss_before_kib"]) / 1000
        return r
    r = run_perf(perf, broker, args, duration, workdir)
    if sid == "6":
        r["p99"] = r["latency_us"]["p99"]
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--only", default="", help="comma-separated scenario ids")
    ap.add_argument("--out", default=os.path.join(REPO, "benches", "results"))
    a = ap.parse_args()
    # A TERM (timeout, kill) still stops the brokers: the `finally` below runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Scenario 9 holds 1,000 connections: the generator and both brokers need the sockets.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    only = set(filter(None, a.only.split(",")))
    scenarios = [s for s in SCENARIOS if not only or s[0] in only]
    ensure_rabbitmq()
    warren_bin, perf = build()
    os.makedirs(a.out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="compare-")
    runs = {s[0]: {"warren": [], "rabbitmq": []} for s in scenarios}
    details = []
    started = time.monotonic()
    for rnd in range(a.rounds):
        log(f"round {rnd + 1}/{a.rounds}: starting both brokers")
        brokers = {}
        try:
            brokers["warren"] = Warren(warren_bin)
            brokers["rabbitmq"] = RabbitMQ()
            time.sleep(2)  # both idle before the idle reading
            order = ["warren", "rabbitmq"] if rnd % 2 == 0 else ["rabbitmq", "warren"]
            # Memory first, on brokers that have served nothing yet (the per-connection
            # reading before the fills, whose freed memory would absorb the connections).
            first = ["8a", "9", "8b", "8c"]
            for sid, title, args, key, unit, better in sorted(
                    scenarios, key=lambda s: first.index(s[0]) if s[0] in first else 9):
                for name in order:
                    r = measure(sid, perf, brokers[name], args, a.duration, workdir)
                    value = r.get(key)
                    runs[sid][name].append(value)
                    details.append({"round": rnd + 1, "scenario": sid, "broker": name,
                                    "result": r})
                    log(f"  ({sid}) {name}: {value:,.1f} {unit}")
        finally:
            for b in brokers.values():
                b.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    table = []
    for sid, title, args, key, unit, better in scenarios:
        w = statistics.median(runs[sid]["warren"])
        r = statistics.median(runs[sid]["rabbitmq"])
        row = {"scenario": sid, "title": title, "unit": unit, "better": better,
               "warren": w, "rabbitmq": r, "ratio": w / r if r else None, "perf_args": args}
        if sid == "6":
            row["percentiles_us"] = {
                name: {q: statistics.median(
                    d["result"]["latency_us"][q] for d in details
                    if d["scenario"] == sid and d["broker"] == name)
                    for q in ("p50", "p99", "p999")}
                for name in ("warren", "rabbitmq")}
        table.append(row)
    machine = f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') >> 30} GiB"
    result = {"machine": machine, "rounds": a.rounds, "duration": a.duration,
              "minutes": (time.monotonic() - started) / 60, "table": table, "runs": details}
    with open(os.path.join(a.out, "compare.json"), "w") as f:
        json.dump(result, f, indent=2)
    print_table(table, machine, a)
    chart(table, os.path.join(a.out, "compare.png"), machine)
    log(f"wrote {a.out}/compare.json and {a.out}/compare.png")


def print_table(table, machine, a):
    print(f"\nwarren vs RabbitMQ 3.10, medians of {a.rounds} rounds, {a.duration:g} s runs, {machine}\n")
    print(f"| scenario | warren | RabbitMQ | warren/RabbitMQ |")
    print(f"|---|---|---|---|")
    for t in table:
        note = "higher is better" if t["better"] == "higher" else "lower is better"
        ratio = f"{t['ratio']:.2f}" if t["ratio"] is not None else "-"
        print(f"| ({t['scenario']}) {t['title']} | {t['warren']:,.1f} {t['unit']} | "
              f"{t['rabbitmq']:,.1f} {t['unit']} | {ratio} ({note}) |")


def chart(table, path, machine):
    try:
        import matplotlib
    except ImportError:
        log("installing matplotlib for the chart")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"],
                       check=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [
        ("Throughput (higher is better)", [t for t in table if t["better"] == "higher"]),
        ("Latency and memory (lower is better)", [t for t in table if t["better"] == "lower"]),
    ]
    groups = [g for g in groups if g[1]]
    lat = next((t for t in table if "percentiles_us" in t), None)
    panels = len(groups) + (1 if lat else 0)
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 6), squeeze=False)
    if lat:
        ax = axes[0][-1]
        qs = ["p50", "p99", "p999"]
        for i, (name, color) in enumerate([("rabbitmq", "#f28e2b"), ("warren", "#4e79a7")]):
            vals = [lat["percentiles_us"][name][q] for q in qs]
            ax.bar([x + (i - 0.5) * 0.4 for x in range(3)], vals, width=0.4, color=color,
                   label="RabbitMQ 3.10" if name == "rabbitmq" else "warren")
            for x, v in enumerate(vals):
                ax.text(x + (i - 0.5) * 0.4, v, f"{v:,.0f}", ha="center", va="bottom",
                        fontsize=7)
        ax.set_xticks(range(3))
        ax.set_xticklabels(["p50", "p99", "p99.9"])
        ax.set_yscale("log")
        ax.set_ylabel("end-to-end latency, us (log)")
        ax.set_title("(6) latency at 10k msg/s, 16 B")
        ax.legend()
    for ax, (title, rows) in zip(axes[0], groups):
        labels = [f"({t['scenario']})\n{t['unit']}" for t in rows]
        # Each scenario normalised to RabbitMQ = 1, with the absolute values written on.
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [1.0] * len(rows), width=0.4, label="RabbitMQ 3.10",
               color="#f28e2b")
        ax.bar([x + 0.2 for x in xs], [t["ratio"] or 0 for t in rows], width=0.4,
               label="warren", color="#4e79a7")
        for x, t in zip(xs, rows):
            ax.text(x - 0.2, 1.0, f"{t['rabbitmq']:,.0f}", ha="center", va="bottom", fontsize=7)
            ax.text(x + 0.2, t["ratio"] or 0, f"{t['warren']:,.0f}", ha="center",
                    va="bottom", fontsize=7)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel("relative to RabbitMQ (= 1)")
        ax.set_title(title)
        ax.legend()
        if rows and rows[0]["better"] == "higher":
            ax.set_yscale("log")
    fig.suptitle(f"warren vs RabbitMQ 3.10 on {machine} (broker and load generator on one machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
