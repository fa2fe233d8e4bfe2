#!/usr/bin/env python3
"""Interop scenarios for Kombu and Celery (py-amqp transport, pyamqp://).

Run: AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2F python3 interop/celery/test_celery.py [NAME...]

The Celery scenario starts a real worker (`celery worker --pool solo`) and sends it 200 tasks
whose results come back over the rpc:// backend (reply queues with x-expires, pidbox queues
with x-message-ttl). The last line is "celery: N passed, N failed".
"""

import os
import subprocess
import sys
import time
import traceback
import uuid

import kombu

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
PYAMQP = "pyamqp://" + URL.split("://", 1)[1]
RUN = uuid.uuid4().hex[:10]
HERE = os.path.dirname(os.path.abspath(__file__))


def name(suffix):
    return f"interop.celery.{RUN}.{suffix}"


def eq(actual, expected, what):
    if actual != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")


def scenario_kombu_simple_queue():
    with kombu.Connection(PYAMQP) as conn:
        q = conn.SimpleQueue(name("simple"))
        try:
            for i in range(10):
                q.put({"n": i})
            got = []
            for _ in range(10):
                m = q.get(block=True, timeout=5)
                got.append(m.payload["n"])
                m.ack()
            eq(got, list(range(10)), "payloads in order")
            eq(q.qsize(), 0, "empty after acks")
        finally:
            q.close()  # cancels the consumer first (deleting under it would cancel it)
            kombu.Queue(name("simple")).bind(conn.default_channel).delete()


def scenario_kombu_requeue_and_reject():
    with kombu.Connection(PYAMQP) as conn:
        exchange = kombu.Exchange(name("x"), type="direct", durable=True)
        queue = kombu.Queue(name("durable"), exchange, routing_key="k", durable=True)
        producer = conn.Producer()
        producer.publish({"job": 1}, exchange=exchange, routing_key="k", declare=[queue],
                         delivery_mode=2)
        seen = []

        def handle(body, message):
            seen.append((body["job"], message.delivery_info["redelivered"]))
            if len(seen) == 1:
                message.requeue()
            else:
                message.reject()

        try:
            with conn.Consumer(queue, callbacks=[handle], accept=["json"]):
                deadline = time.monotonic() + 5
                while len(seen) < 2 and time.monotonic() < deadline:
                    conn.drain_events(timeout=1)
            eq(seen, [(1, False), (1, True)], "requeued once, then rejected")
            eq(queue.bind(conn.default_channel).queue_declare(passive=True).message_count, 0,
               "rejected message dropped")
        finally:
            queue.bind(conn.default_channel).delete()
            exchange.bind(conn.default_channel).delete()


def scenario_celery_worker_200_tasks_rpc_backend():
    env = dict(os.environ, AMQP_URL=URL, CELERY_QUEUE=name("tasks"), PYTHONPATH=HERE)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool", "solo",
         "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "-n",
         f"interop-{RUN}@localhost"],
        cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        sys.path.insert(0, HERE)
        os.environ["CELERY_QUEUE"] = name("tasks")
        import tasks  # noqa: E402 - configured by the environment above
        results = [tasks.add.delay(i, i) for i in range(200)]
        got = [r.get(timeout=30) for r in results]
        eq(got, [2 * i for i in range(200)], "task results")
        # The worker answers a broadcast over its pidbox queue (x-message-ttl).
        replies = tasks.app.control.ping(timeout=2.0)
        eq(len(replies), 1, f"ping replies {replies}")
        tasks.app.control.purge()
    finally:
        worker.terminate()
        try:
            out, _ = worker.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate()
        if worker.returncode not in (0, -15):
            print(f"    worker exited {worker.returncode}:\n{out[-2000:]}")


SCENARIOS = [
    scenario_kombu_simple_queue,
    scenario_kombu_requeue_and_reject,
    scenario_celery_worker_200_tasks_rpc_backend,
]


def main(argv):
    import celery
    selected = [s for s in SCENARIOS if not argv or any(a in s.__name__ for a in argv)]
    passed = failed = 0
    print(f"kombu {kombu.__version__}, celery {celery.__version__} against {URL} (run {RUN})")
    for scenario in selected:
        label = scenario.__name__[len("scenario_"):]
        started = time.monotonic()
        try:
            scenario()
            passed += 1
            print(f"ok   {label} ({time.monotonic() - started:.2f}s)")
        except Exception as e:  # noqa: BLE001 - report everything
            failed += 1
            print(f"FAIL {label} ({time.monotonic() - started:.2f}s): {type(e).__name__}: {e}")
            for line in traceback.format_exc().rstrip().splitlines()[-6:]:
                print(f"    {line}")
    print(f"celery: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
