#!/usr/bin/env python3
"""An hour of load with churn against one warren; its resources must stay flat.

    benches/soak.py [--minutes 60] [--out benches/results]

Builds warren and the load generator (benches/perf), starts warren on a free port with a
temporary data directory, measures the generator's maximum rate for 10 s, then for
--minutes runs at the same time:

- publishers that never stop: perf at half the maximum rate (transient, 1 KiB, auto-ack)
  and a persistent confirmed stream to a durable queue at a tenth of it;
- churn (pika): connections opened and closed, channels, queues declared, bound, used
  and deleted, exclusive and auto-delete queues, a few times a second;
- consumers that never read: raw sockets that log in, subscribe to the busy queue without
  acks and never read again, replaced every minute.

Every minute it records the broker's RSS, open file descriptors, threads and (from the
broker's stats log line) live tokio tasks, connections and queued bytes. It prints a table
and writes soak.json; "flat" compares the last fifth of the run with the first after warm-up.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benches"))
from compare import build, free_port, wait_port  # noqa: E402

import pika  # noqa: E402


def log(msg):
    print(f"soak: {msg}", file=sys.stderr, flush=True)


def proc_stats(pid):
    status = open(f"/proc/{pid}/status").read()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return {"rss_mib": round(rss / 1024, 1), "fds": fds, "threads": threads}


def last_stats_line(path):
    """The broker's newest periodic stats line: tasks, connections, queued bytes."""
    found = {}
    with open(path, errors="replace") as f:
        for line in f:
            if "broker stats" in line:
                found = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
    return found


class Churn(threading.Thread):
    """Connections, channels and queues created and deleted, until stopped."""

    def __init__(self, port, stop):
        super().__init__(daemon=True)
        self.port, self.stop, self.cycles, self.errors = port, stop, 0, 0

    def run(self):
        params = pika.ConnectionParameters("127.0.0.1", self.port, heartbeat=0)
        while not self.stop.is_set():
            try:
                with pika.BlockingConnection(params) as conn:
                    for i in range(3):
                        ch = conn.channel()
                        q = ch.queue_declare("", exclusive=(i == 0), auto_delete=(i == 1)).method.queue
                        ch.queue_bind(q, "amq.topic", routing_key=f"churn.{i}.#")
                        for _ in range(10):
                            ch.basic_publish("amq.topic", f"churn.{i}.x", b"c" * 100)
                        ch.basic_get(q, auto_ack=True)
                        ch.queue_delete(q)
                        ch.close()
                self.cycles += 1
            except Exception as e:  # noqa: BLE001 - counted and reported
                self.errors += 1
                log(f"churn error: {e!r}")
            time.sleep(0.2)


def frame(kind, channel, payload):
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def short(text):
    return bytes([len(text)]) + text.encode()


def read_method(sock):
    """Read frames until a method frame; return its class and method ids."""
    while True:
        head = b""
        while len(head) < 7:
            head += sock.recv(7 - len(head))
        kind, _, size = struct.unpack(">BHI", head)
        body = b""
        while len(body) < size + 1:
            body += sock.recv(size + 1 - len(body))
        if kind == 1:
            return struct.unpack(">HH", body[:4])


def stuck_consumer(port):
    """A consumer of the busy queue whose socket is never read once it has subscribed."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"AMQP\x00\x00\x09\x01")
    read_method(sock)  # start
    response = b"\0guest\0guest"
    sock.sendall(frame(1, 0, struct.pack(">HHI", 10, 11, 0) + short("PLAIN")
                       + struct.pack(">I", len(response)) + response + short("en_US")))
    read_method(sock)  # tune
    sock.sendall(frame(1, 0, struct.pack(">HHHIH", 10, 31, 0, 131072, 0)))
    sock.sendall(frame(1, 0, struct.pack(">HH", 10, 40) + short("/") + short("") + b"\0"))
    read_method(sock)  # open-ok
    sock.sendall(frame(1, 1, struct.pack(">HH", 20, 10) + short("")))
    read_method(sock)  # channel open-ok
    # basic.consume, no-ack: deliveries pile up in the broker's buffer for this socket.
    sock.sendall(frame(1, 1, struct.pack(">HHH", 60, 20, 0) + short("soak") + short("")
                       + b"\x02" + struct.pack(">I", 0)))
    return sock


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--out", default=os.path.join(REPO, "benches", "results"))
    a = ap.parse_args()
    warren_bin, perf = build()
    tmp = tempfile.mkdtemp(prefix="soak-")
    port = free_port()
    conf = os.path.join(tmp, "warren.toml")
    with open(conf, "w") as f:
        f.write("stats_log_interval_ms = 60000\n")
    broker_log = os.path.join(tmp, "warren.log")
    broker = subprocess.Popen(
        [warren_bin, "--config", conf, "--listen", f"127.0.0.1:{port}",
         "--data-dir", os.path.join(tmp, "data")],
        stdout=subprocess.DEVNULL, stderr=open(broker_log, "w"), start_new_session=True,
        env=dict(os.environ, WARREN_LOG="info"))
    wait_port(port, broker)
    url = f"amqp://guest:guest@127.0.0.1:{port}/%2f"
    jobs = []
    try:
        out = os.path.join(tmp, "max.json")
        subprocess.run([perf, "--url", url, "--queue", "soak-max", "--duration", "10",
                        "--size", "1024", "--auto-ack", "--json", out],
                       check=True, stdout=subprocess.DEVNULL)
        top = json.load(open(out))["consumed_per_sec"]
        rate = top / 2
        log(f"maximum {top:,.0f} msg/s; soaking at {rate:,.0f} msg/s for {a.minutes} min")
        seconds = a.minutes * 60
        jobs.append(subprocess.Popen(
            [perf, "--url", url, "--queue", "soak", "--duration", str(seconds), "--size", "1024",
             "--auto-ack", "--rate", str(rate)], stdout=subprocess.DEVNULL))
        jobs.append(subprocess.Popen(
            [perf, "--url", url, "--queue", "soak-durable", "--duration", str(seconds),
             "--size", "1024", "--persistent", "--durable", "--confirm", "100",
             "--prefetch", "100", "--multiple-ack", "10", "--rate", str(rate / 10)],
            stdout=subprocess.DEVNULL))
        stop = threading.Event()
        churn = Churn(port, stop)
        churn.start()
        stuck = [stuck_consumer(port) for _ in range(3)]
        samples = []
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            time.sleep(min(60, max(0, seconds - (time.monotonic() - started))))
            if broker.poll() is not None:
                raise RuntimeError(f"warren exited with {broker.returncode}")
            for c in stuck:  # replace the stuck consumers: their connections churn too
                c.close()
            stuck = [stuck_consumer(port) for _ in range(3)]
            s = {"minute": round((time.monotonic() - started) / 60, 1), **proc_stats(broker.pid),
                 **last_stats_line(broker_log), "churn_cycles": churn.cycles}
            samples.append(s)
            log(json.dumps(s))
        stop.set()
        for j in jobs:
            j.wait(timeout=120)
        failed = [j.returncode for j in jobs if j.returncode]
        report(samples, churn, failed, a, top, rate)
        if failed or churn.errors:
            sys.exit(1)
    finally:
        for j in jobs:
            if j.poll() is None:
                j.kill()
        os.killpg(broker.pid, signal.SIGTERM)
        broker.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


def report(samples, churn, failed, a, top, rate):
    keys = ["rss_mib", "fds", "threads", "tasks", "connections", "queued_bytes"]
    print("| minute | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for s in samples:
        print(f"| {s['minute']} | " + " | ".join(str(s.get(k, "")) for k in keys) + " |")
    n = len(samples)
    warm = samples[max(1, n // 10):] if n > 2 else samples
    fifth = max(1, len(warm) // 5)
    flat = {}
    for k in keys:
        first = [s[k] for s in warm[:fifth] if k in s]
        last = [s[k] for s in warm[-fifth:] if k in s]
        if first and last:
            flat[k] = {"first": max(first), "last": max(last),
                       "growth": round(max(last) / max(max(first), 1), 3)}
    print(f"churn cycles {churn.cycles}, churn errors {churn.errors}, generator failures {failed}")
    print("growth (last fifth / first fifth after warm-up): "
          + ", ".join(f"{k} {v['growth']}x" for k, v in flat.items()))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "soak.json"), "w") as f:
        json.dump({"minutes": a.minutes, "max_rate": top, "rate": rate, "samples": samples,
                   "flat": flat, "churn_cycles": churn.cycles, "churn_errors": churn.errors},
                  f, indent=1)


if __name__ == "__main__":
    main()
