#!/usr/bin/env python3
"""A quorum queue on a 3-node cluster through pika, with its leader killed mid-run.

Run by interop/run.sh against the cluster it starts:
  QUORUM_URLS=A,B,C       one AMQP URL per node
  INTEROP_KILL=CMD        kill -9 node B (the queue's leader: it is declared there with
                          x-queue-leader-locator client-local)
  INTEROP_REVIVE=CMD      start node B again on its data
  INTEROP_LABEL           the summary label (default "pikaquorum")

The publisher publishes with confirms on node B, B is killed, and the publisher reconnects
to node C and goes on (a nack or a lost connection is retried there). A consumer on node A
then takes everything, acking; like Jepsen's total-queue check: every confirmed message is
consumed (lost = 0), nothing is consumed that was never published (unexpected = 0), and
duplicates (a retried publish that had been taken) are counted, not failed. Last line:
"LABEL: N passed, N failed".
"""

import os
import subprocess
import sys
import time
import traceback
import uuid

import pika
from pika.exceptions import AMQPError

URLS = os.environ["QUORUM_URLS"].split(",")
KILL = os.environ["INTEROP_KILL"]
REVIVE = os.environ["INTEROP_REVIVE"]
LABEL = os.environ.get("INTEROP_LABEL", "pikaquorum")
QUEUE = f"interop.pika.{uuid.uuid4().hex[:10]}.quorum"
BEFORE, AFTER = 100, 100
DEADLINE = 40.0  # seconds for the whole scenario


def connect(url):
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.blocked_connection_timeout = 10
    return pika.BlockingConnection(params)


def publish(ch, i):
    ch.basic_publish(
        "", QUEUE, f"m{i}".encode(),
        properties=pika.BasicProperties(delivery_mode=2),
    )


def publish_until_confirmed(url, ids, confirmed, deadline):
    """Publish each id with confirms on `url`, again after a nack or a lost connection
    (reconnecting to the same node), until all are confirmed."""
    pending = list(ids)
    while pending:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(pending)} publishes never confirmed on {url}")
        try:
            conn = connect(url)
            ch = conn.channel()
            ch.confirm_delivery()
            while pending:
                try:
                    publish(ch, pending[0])
                except pika.exceptions.NackError:
                    time.sleep(0.2)
                    continue
                confirmed.add(pending.pop(0))
            conn.close()
        except AMQPError:
            time.sleep(0.2)


def scenario(stats):
    deadline = time.monotonic() + DEADLINE
    a = connect(URLS[0])
    # Declared on node B, client-local: B leads, so killing B kills the leader.
    b = connect(URLS[1])
    b.channel().queue_declare(
        QUEUE, durable=True,
        arguments={"x-queue-type": "quorum", "x-queue-leader-locator": "client-local"})
    ch = b.channel()
    ch.confirm_delivery()
    confirmed = set()
    for i in range(BEFORE):
        publish(ch, i)
        confirmed.add(i)
    subprocess.run(KILL, shell=True, check=True)
    # The old connection is gone with its node: this publish must not be confirmed.
    try:
        publish(ch, -1)
        raise AssertionError("a publish on the killed node's connection was confirmed")
    except (AMQPError, OSError):
        pass
    publish_until_confirmed(URLS[2], range(BEFORE, BEFORE + AFTER), confirmed, deadline)

    got = []
    cch = a.channel()
    cch.basic_qos(prefetch_count=50)
    want = confirmed
    while not want.issubset(set(got)):
        if time.monotonic() > deadline:
            break
        method, _, body = next(cch.consume(QUEUE, inactivity_timeout=1.0))
        if method is None:
            continue
        got.append(int(body.decode()[1:]))
        cch.basic_ack(method.delivery_tag)
    cch.cancel()
    # m-1 may have reached the node before it died: published, not confirmed.
    published = set(range(BEFORE + AFTER)) | {-1}
    lost = sorted(confirmed - set(got))
    unexpected = sorted(set(got) - published)
    stats.update(confirmed=len(confirmed), consumed=len(got),
                 duplicates=len(got) - len(set(got)), lost=len(lost),
                 unexpected=len(unexpected))
    if lost or unexpected:
        raise AssertionError(f"lost {lost[:10]}, unexpected {unexpected[:10]}")
    subprocess.run(REVIVE, shell=True, check=True)
    a.channel().queue_delete(QUEUE)
    a.close()


def main():
    stats = {}
    passed = failed = 0
    try:
        scenario(stats)
        print(f"ok   leader_killed_publisher_reconnects {stats}")
        passed += 1
    except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
        print(f"FAIL leader_killed_publisher_reconnects: {e} {stats}")
        traceback.print_exc()
        failed += 1
    print(f"{LABEL}: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
