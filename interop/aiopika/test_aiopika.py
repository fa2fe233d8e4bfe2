#!/usr/bin/env python3
"""Interop scenarios for aio-pika (asyncio).

Run: AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2F python3 interop/aiopika/test_aiopika.py [NAME...]

Every scenario opens its own connection, uses names with a per-run random suffix,
deletes what it declared and asserts exact outcomes. The last line is
"aiopika: N passed, N failed"; the exit status is 0 only if all passed.
"""

import asyncio
import os
import sys
import time
import traceback
import uuid

import aio_pika
from aio_pika.exceptions import ChannelNotFoundEntity

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
RUN = uuid.uuid4().hex[:10]
SCENARIO_TIMEOUT = 30


def name(suffix):
    return f"interop.aiopika.{RUN}.{suffix}"


def eq(actual, expected, what):
    if actual != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")


async def count(channel, queue_name):
    q = await channel.declare_queue(queue_name, passive=True)
    return q.declaration_result.message_count


async def scenario_confirmed_publish_and_consume_1000(conn):
    ch = await conn.channel(publisher_confirms=True)
    q = await ch.declare_queue(name("confirm1000"), durable=True)
    try:
        # Each publish returns once the broker acked it (a nack raises).
        await asyncio.gather(*(
            ch.default_exchange.publish(
                aio_pika.Message(f"m-{i}".encode(),
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=q.name)
            for i in range(1000)))
        eq(await count(ch, q.name), 1000, "queued after 1000 confirms")
        await ch.set_qos(prefetch_count=100)
        got = []
        async with q.iterator() as it:
            async for message in it:
                got.append(message.body)
                await message.ack()
                if len(got) == 1000:
                    break
        eq(got, [f"m-{i}".encode() for i in range(1000)], "bodies in order")
        eq(await count(ch, q.name), 0, "left after acking all")
    finally:
        await q.delete(if_unused=False, if_empty=False)


async def scenario_transaction_commit_and_rollback(conn):
    ch = await conn.channel(publisher_confirms=False)
    watcher = await conn.channel()
    q = await ch.declare_queue(name("tx"))
    try:
        async with ch.transaction():
            for i in range(3):
                await ch.default_exchange.publish(aio_pika.Message(f"c-{i}".encode()),
                                                  routing_key=q.name)
            eq(await count(watcher, q.name), 0, "invisible before commit")
        eq(await count(watcher, q.name), 3, "visible after commit")
        tx = ch.transaction()
        await tx.select()
        await ch.default_exchange.publish(aio_pika.Message(b"rolled back"), routing_key=q.name)
        await tx.rollback()
        eq(await count(watcher, q.name), 3, "rollback discards the publish")
        bodies = []
        while (m := await q.get(no_ack=True, fail=False)) is not None:
            bodies.append(m.body)
        eq(bodies, [b"c-0", b"c-1", b"c-2"], "committed bodies")
    finally:
        await q.delete(if_unused=False, if_empty=False)


async def scenario_missing_queue_is_404(conn):
    ch = await conn.channel()
    try:
        await ch.declare_queue(name("missing"), passive=True)
        raise AssertionError("passive declare of a missing queue succeeded")
    except ChannelNotFoundEntity:
        pass  # aiormq's exception for reply code 404 NOT_FOUND


class Skip(Exception):
    pass


async def scenario_robust_connection_reconnects_after_a_restart(_conn):
    restart = os.environ.get("INTEROP_RESTART")
    if not restart:
        raise Skip("INTEROP_RESTART is not set")
    robust = await aio_pika.connect_robust(URL, timeout=5, reconnect_interval=0.2)
    try:
        ch = await robust.channel(publisher_confirms=True)
        q = await ch.declare_queue(name("robust"), durable=True)
        persistent = aio_pika.DeliveryMode.PERSISTENT
        await ch.default_exchange.publish(
            aio_pika.Message(b"before", delivery_mode=persistent), routing_key=q.name)
        reconnected = asyncio.Event()
        robust.reconnect_callbacks.add(lambda *_: reconnected.set())
        proc = await asyncio.create_subprocess_shell(restart)
        eq(await proc.wait(), 0, "restart command status")
        await asyncio.wait_for(reconnected.wait(), 20)
        # The robust channel and queue are back: publish and read through them.
        await ch.default_exchange.publish(
            aio_pika.Message(b"after", delivery_mode=persistent), routing_key=q.name)
        bodies = []
        while (m := await q.get(no_ack=True, fail=False)) is not None:
            bodies.append(m.body)
        eq(bodies, [b"before", b"after"], "bodies across the restart")
        await q.delete(if_unused=False, if_empty=False)
    finally:
        await robust.close()


SCENARIOS = [
    scenario_confirmed_publish_and_consume_1000,
    scenario_transaction_commit_and_rollback,
    scenario_missing_queue_is_404,
    scenario_robust_connection_reconnects_after_a_restart,
]


async def main(argv):
    selected = [s for s in SCENARIOS if not argv or any(a in s.__name__ for a in argv)]
    passed = failed = 0
    print(f"aio-pika {aio_pika.__version__} against {URL} (run {RUN})")
    for scenario in selected:
        label = scenario.__name__[len("scenario_"):]
        started = time.monotonic()
        try:
            conn = await aio_pika.connect(URL, timeout=5)
            try:
                await asyncio.wait_for(scenario(conn), SCENARIO_TIMEOUT)
            finally:
                await conn.close()
            passed += 1
            print(f"ok   {label} ({time.monotonic() - started:.2f}s)")
        except Skip as e:
            print(f"skip {label}: {e}")
        except Exception as e:  # noqa: BLE001 - report everything
            failed += 1
            print(f"FAIL {label} ({time.monotonic() - started:.2f}s): {type(e).__name__}: {e}")
            for line in traceback.format_exc().rstrip().splitlines()[-6:]:
                print(f"    {line}")
    print(f"aiopika: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
