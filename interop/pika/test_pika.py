#!/usr/bin/env python3
"""Interop scenarios for the pika client (BlockingConnection).

Run: AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2F python3 interop/pika/test_pika.py [NAME...]

Against a cluster, AMQP_URLS lists one URL per node (comma-separated): each new
connection goes to the next node in turn, so that a scenario's second connection (the
one that deletes, requeues or cleans up) is on another node than its first.
INTEROP_LABEL names the suite in the summary line (default "pika").

Every scenario opens its own connection, uses queue and exchange names with a
per-run random suffix, deletes what it declared, and asserts exact outcomes.
Exit status is 0 only when every selected scenario passed. The last line is
"N passed, N failed".
"""

import datetime
import decimal
import os
import signal
import sys
import time
import traceback
import uuid

import pika
from pika.compat import long
from pika.exceptions import ChannelClosedByBroker, UnroutableError

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
URLS = [u for u in os.environ.get("AMQP_URLS", "").split(",") if u] or [URL]
URL = URLS[0]
LABEL = os.environ.get("INTEROP_LABEL", "pika")
_next_node = [0]


def next_url():
    """The URL of the node the next connection goes to (round robin over URLS)."""
    url = URLS[_next_node[0] % len(URLS)]
    _next_node[0] += 1
    return url
RUN = uuid.uuid4().hex[:10]
SCENARIO_TIMEOUT = 20  # seconds, per scenario


class ScenarioTimeout(Exception):
    pass


def name(suffix):
    return f"interop.pika.{RUN}.{suffix}"


def eq(actual, expected, what):
    if actual != expected or type(actual) is not type(expected):
        raise AssertionError(
            f"{what}: expected {expected!r} ({type(expected).__name__}), "
            f"got {actual!r} ({type(actual).__name__})")


def deep_eq(actual, expected, path="value"):
    """Equality that also checks types all the way down (True != 1, b'' != '')."""
    if type(actual) is not type(expected):
        raise AssertionError(
            f"{path}: expected {expected!r} ({type(expected).__name__}), "
            f"got {actual!r} ({type(actual).__name__})")
    if isinstance(expected, dict):
        if set(actual) != set(expected):
            raise AssertionError(
                f"{path}: keys differ: expected {sorted(expected)}, got {sorted(actual)}")
        for k in expected:
            deep_eq(actual[k], expected[k], f"{path}[{k!r}]")
    elif isinstance(expected, list):
        if len(actual) != len(expected):
            raise AssertionError(
                f"{path}: expected {len(expected)} items {expected!r}, got {len(actual)} {actual!r}")
        for i, (a, e) in enumerate(zip(actual, expected)):
            deep_eq(a, e, f"{path}[{i}]")
    elif actual != expected:
        raise AssertionError(f"{path}: expected {expected!r}, got {actual!r}")


class Ctx:
    """One connection per scenario plus cleanup of declared entities."""

    def __init__(self):
        self.conns = []
        self.queues = []
        self.exchanges = []
        self.conn = self.connect()

    def connect(self):
        params = pika.URLParameters(next_url())
        params.connection_attempts = 1
        params.socket_timeout = 5
        params.blocked_connection_timeout = 10
        conn = pika.BlockingConnection(params)
        self.conns.append(conn)
        return conn

    def queue(self, ch, suffix, **kw):
        q = name(suffix)
        ok = ch.queue_declare(q, **kw)
        eq(ok.method.queue, q, "queue.declare-ok queue name")
        self.queues.append(q)
        return q

    def exchange(self, ch, suffix, kind):
        ex = name(suffix)
        ch.exchange_declare(ex, exchange_type=kind)
        self.exchanges.append(ex)
        return ex

    def cleanup(self):
        try:
            conn = self.connect()
            ch = conn.channel()
            for q in self.queues:
                ch.queue_delete(q)
            for ex in self.exchanges:
                ch.exchange_delete(ex)
        except Exception as e:  # cleanup is best effort
            print(f"    (cleanup failed: {e!r})")
        for c in self.conns:
            try:
                if c.is_open:
                    c.close()
            except Exception:
                pass


def wait_until(conn, pred, what, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        conn.process_data_events(time_limit=0.02)


def settle(conn, seconds=0.25):
    """Pump the connection for a while so that any extra deliveries show up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.02)


def message_count(ch, q):
    return ch.queue_declare(q, passive=True).method.message_count


def wait_count(ch, q, n, timeout=3.0):
    """Poll until the queue holds n messages (requeues may be asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        count = message_count(ch, q)
        if count == n or time.monotonic() > deadline:
            eq(count, n, f"message_count of {q}")
            return
        time.sleep(0.02)


def drain(ch, q):
    """basic_get with auto-ack until the queue is empty; returns bodies."""
    out = []
    while True:
        m, _p, body = ch.basic_get(q, auto_ack=True)
        if m is None:
            return out
        out.append(body)
        if len(out) > 10000:
            raise AssertionError("queue never became empty")


# --------------------------------------------------------------------------
# scenarios


def scenario_basic_get_100(ctx):
    ch = ctx.conn.channel()
    q = ctx.queue(ch, "get100")
    for i in range(100):
        ch.basic_publish("", q, f"msg-{i:03d}".encode())
    eq(message_count(ch, q), 100, "message_count after 100 publishes")
    for i in range(100):
        m, props, body = ch.basic_get(q, auto_ack=False)
        if m is None:
            raise AssertionError(f"basic_get #{i} returned get-empty")
        eq(body, f"msg-{i:03d}".encode(), f"body of get #{i}")
        eq(m.message_count, 99 - i, f"get-ok message_count of get #{i}")
        eq(m.delivery_tag, i + 1, f"delivery_tag of get #{i}")
        eq(m.redelivered, False, f"redelivered of get #{i}")
        eq(m.exchange, "", f"exchange of get #{i}")
        eq(m.routing_key, q, f"routing_key of get #{i}")
        ch.basic_ack(m.delivery_tag)
    eq(ch.basic_get(q, auto_ack=False), (None, None, None), "basic_get on empty queue")
    eq(message_count(ch, q), 0, "message_count after draining")


def scenario_consume_prefetch_manual_ack(ctx):
    n = 35
    ch = ctx.conn.channel()
    q = ctx.queue(ch, "prefetch")
    for i in range(n):
        ch.basic_publish("", q, f"p-{i:02d}".encode())
    ch.basic_qos(prefetch_count=10)
    got = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append((m, b)), auto_ack=False)

    # first window: exactly 10, no more
    wait_until(ctx.conn, lambda: len(got) >= 10, "first 10 deliveries")
    settle(ctx.conn)
    eq(len(got), 10, "deliveries with 10 unacked (prefetch_count=10)")
    # ack a single one -> exactly one more
    ch.basic_ack(got[0][0].delivery_tag)
    wait_until(ctx.conn, lambda: len(got) >= 11, "delivery after single ack")
    settle(ctx.conn)
    eq(len(got), 11, "deliveries after one ack")
    acked = 1
    # ack the rest window by window with multiple=True
    while acked < n:
        ch.basic_ack(got[-1][0].delivery_tag, multiple=True)
        acked = len(got)
        expected = min(acked + 10, n)
        if acked == n:
            break
        wait_until(ctx.conn, lambda: len(got) >= expected, f"{expected} deliveries")
        settle(ctx.conn, 0.1)
        eq(len(got), expected, "deliveries after multiple ack")
    eq([b for _, b in got], [f"p-{i:02d}".encode() for i in range(n)], "bodies in order")
    eq([m.delivery_tag for m, _ in got], list(range(1, n + 1)), "delivery tags")
    eq([m.redelivered for m, _ in got], [False] * n, "redelivered flags")
    eq({m.consumer_tag for m, _ in got}, {tag}, "consumer tags on deliveries")
    ch.basic_cancel(tag)
    eq(message_count(ch, q), 0, "message_count after acking all")


def scenario_nack_requeue_redelivers(ctx):
    ch = ctx.conn.channel()
    q = ctx.queue(ch, "nack")
    ch.basic_publish("", q, b"first")
    ch.basic_publish("", q, b"second")
    m, _, body = ch.basic_get(q)
    eq(body, b"first", "first get body")
    eq(m.redelivered, False, "first get redelivered")
    eq(m.message_count, 1, "first get message_count")
    ch.basic_nack(m.delivery_tag, requeue=True)
    m, _, body = ch.basic_get(q)
    eq(body, b"first", "requeued message is back at the head")
    eq(m.redelivered, True, "redelivered after nack(requeue=True)")
    eq(m.message_count, 1, "message_count after requeue")
    ch.basic_ack(m.delivery_tag)

    # same through a consumer: nack the first delivery, get it back redelivered
    got = []

    def on_msg(c, m, p, b):
        got.append((m.redelivered, b))
        if not m.redelivered:
            c.basic_nack(m.delivery_tag, requeue=True)
        else:
            c.basic_ack(m.delivery_tag)

    ch.basic_qos(prefetch_count=1)
    tag = ch.basic_consume(q, on_msg)
    wait_until(ctx.conn, lambda: len(got) >= 2, "2 consumer deliveries")
    settle(ctx.conn)
    ch.basic_cancel(tag)
    eq(got, [(False, b"second"), (True, b"second")],
       "consumer deliveries (nack requeue once, then ack)")
    eq(message_count(ch, q), 0, "message_count at end")


def scenario_reject_without_requeue_drops(ctx):
    ch = ctx.conn.channel()
    q = ctx.queue(ch, "reject")
    ch.basic_publish("", q, b"doomed")
    ch.basic_publish("", q, b"kept")
    m, _, body = ch.basic_get(q)
    eq(body, b"doomed", "first body")
    ch.basic_reject(m.delivery_tag, requeue=False)
    m, _, body = ch.basic_get(q)
    eq(body, b"kept", "next body after reject(requeue=False)")
    eq(m.redelivered, False, "kept message redelivered flag")
    eq(m.message_count, 0, "message_count after reject")
    ch.basic_ack(m.delivery_tag)
    eq(ch.basic_get(q), (None, None, None), "queue empty: rejected message was dropped")
    eq(message_count(ch, q), 0, "message_count at end")


def scenario_mandatory_unroutable_in_confirm_mode(ctx):
    ch = ctx.conn.channel()
    ch.confirm_delivery()
    missing = name("no-such-queue")
    props = pika.BasicProperties(message_id="m-1")
    try:
        ch.basic_publish("", missing, b"lost", properties=props, mandatory=True)
    except UnroutableError as e:
        eq(len(e.messages), 1, "returned messages")
        r = e.messages[0]
        eq(r.method.reply_code, 312, "basic.return reply_code")
        eq(r.method.reply_text, "NO_ROUTE", "basic.return reply_text")
        eq(r.method.exchange, "", "basic.return exchange")
        eq(r.method.routing_key, missing, "basic.return routing_key")
        eq(r.body, b"lost", "returned body")
        eq(r.properties.message_id, "m-1", "returned properties")
    else:
        raise AssertionError("mandatory publish to unroutable key did not raise UnroutableError")
    eq(ch.is_open, True, "channel open after basic.return")

    # an exchange with no bindings is unroutable too
    ex = ctx.exchange(ch, "mand-direct", "direct")
    try:
        ch.basic_publish(ex, "nowhere", b"lost2", mandatory=True)
        raise AssertionError("mandatory publish to unbound exchange did not raise")
    except UnroutableError as e:
        eq(e.messages[0].method.reply_code, 312, "reply_code (unbound exchange)")
        eq(e.messages[0].method.exchange, ex, "exchange (unbound exchange)")

    # a routable mandatory publish is simply confirmed
    q = ctx.queue(ch, "mand-ok")
    ch.basic_publish("", q, b"found", mandatory=True)
    eq(message_count(ch, q), 1, "routable mandatory publish delivered")


def scenario_confirm_100(ctx):
    ch = ctx.conn.channel()
    q = ctx.queue(ch, "confirm100", durable=True)
    ch.confirm_delivery()
    for i in range(100):
        # raises NackError / UnroutableError unless acked
        ch.basic_publish("", q, f"c-{i}".encode(),
                         properties=pika.BasicProperties(delivery_mode=2),
                         mandatory=True)
    eq(message_count(ch, q), 100, "message_count after 100 confirmed publishes")
    eq(drain(ch, q), [f"c-{i}".encode() for i in range(100)], "confirmed bodies")


def scenario_topic_routing(ctx):
    ch = ctx.conn.channel()
    ex = ctx.exchange(ch, "topic", "topic")
    bindings = {"star": "a.*", "hash": "a.#", "tail": "#.c", "exact": "a.b", "all": "#",
                "mid": "*.b.*"}
    qs = {}
    for k, pattern in bindings.items():
        qs[k] = ctx.queue(ch, f"topic-{k}")
        ch.queue_bind(qs[k], ex, routing_key=pattern)
    keys = ["a", "a.b", "a.b.c", "b.a", "a.x", "a.b.c.d", "x.a.b", "c", ""]
    for key in keys:
        ch.basic_publish(ex, key, key.encode() or b"<empty>")
    expected = {
        "star": [b"a.b", b"a.x"],
        "hash": [b"a", b"a.b", b"a.b.c", b"a.x", b"a.b.c.d"],
        "tail": [b"a.b.c", b"c"],
        "exact": [b"a.b"],
        "all": [k.encode() or b"<empty>" for k in keys],
        "mid": [b"a.b.c"],
    }
    for k in bindings:
        eq(drain(ch, qs[k]), expected[k], f"queue bound with {bindings[k]!r}")


def scenario_headers_exchange(ctx):
    ch = ctx.conn.channel()
    ex = ctx.exchange(ch, "headers", "headers")
    match = {"format": "pdf", "type": "report"}
    q_any = ctx.queue(ch, "hdr-any")
    q_all = ctx.queue(ch, "hdr-all")
    q_default = ctx.queue(ch, "hdr-default")
    ch.queue_bind(q_any, ex, arguments={"x-match": "any", **match})
    ch.queue_bind(q_all, ex, arguments={"x-match": "all", **match})
    ch.queue_bind(q_default, ex, arguments=dict(match))  # default x-match is all
    cases = [
        ("both", {"format": "pdf", "type": "report"}),
        ("format-only", {"format": "pdf"}),
        ("type-extra", {"type": "report", "extra": "x"}),
        ("neither", {"format": "zip", "type": "log"}),
        ("no-headers", None),
        ("both-extra", {"format": "pdf", "type": "report", "n": 1}),
        ("wrong-value", {"format": "pdf", "type": "invoice"}),
    ]
    for body, headers in cases:
        ch.basic_publish(ex, "ignored-key", body.encode(),
                         properties=pika.BasicProperties(headers=headers))
    eq(drain(ch, q_any), [b"both", b"format-only", b"type-extra", b"both-extra", b"wrong-value"],
       "x-match=any queue")
    eq(drain(ch, q_all), [b"both", b"both-extra"], "x-match=all queue")
    eq(drain(ch, q_default), [b"both", b"both-extra"], "queue bound without x-match")


def scenario_exchange_to_exchange_binding(ctx):
    ch = ctx.conn.channel()
    src = ctx.exchange(ch, "e2e-src", "direct")
    dst = ctx.exchange(ch, "e2e-dst", "fanout")
    tsrc = ctx.exchange(ch, "e2e-topic", "topic")
    q = ctx.queue(ch, "e2e")
    ch.queue_bind(q, dst)
    ch.exchange_bind(destination=dst, source=src, routing_key="k")
    ch.exchange_bind(destination=src, source=tsrc, routing_key="t.#")
    ch.basic_publish(src, "k", b"via-src")
    ch.basic_publish(src, "other", b"not-routed")
    ch.basic_publish(dst, "anything", b"direct-to-dst")
    # topic -> direct -> fanout: the key stays "t.k", which the direct src
    # (bound to dst with "k" only) does not route
    ch.basic_publish(tsrc, "t.k", b"two-hops-wrong-key")
    ch.exchange_bind(destination=dst, source=tsrc, routing_key="t.#")
    ch.basic_publish(tsrc, "t.x", b"topic-to-dst")
    eq(drain(ch, q), [b"via-src", b"direct-to-dst", b"topic-to-dst"], "e2e routed bodies")
    # unbind stops routing
    ch.exchange_unbind(destination=dst, source=src, routing_key="k")
    ch.basic_publish(src, "k", b"after-unbind")
    eq(drain(ch, q), [], "after exchange.unbind")
    # a message that reaches the same queue over two paths is delivered once
    ch.exchange_bind(destination=dst, source=src, routing_key="t.k")
    ch.basic_publish(tsrc, "t.k", b"once")
    eq(drain(ch, q), [b"once"], "message reaching a queue over two paths")


def scenario_passive_declare_missing_queue_404(ctx):
    ch = ctx.conn.channel()
    missing = name("missing")
    try:
        ch.queue_declare(missing, passive=True)
    except ChannelClosedByBroker as e:
        eq(e.reply_code, 404, "channel.close reply_code")
        if "NOT_FOUND" not in e.reply_text:
            raise AssertionError(f"reply_text {e.reply_text!r} does not mention NOT_FOUND")
    else:
        raise AssertionError("passive declare of a missing queue succeeded")
    eq(ch.is_closed, True, "channel closed after 404")
    eq(ctx.conn.is_open, True, "connection still open after channel error")
    ch2 = ctx.conn.channel()
    q = ctx.queue(ch2, "after-404")
    eq(message_count(ch2, q), 0, "new channel works")
    # passive declare of an existing queue is fine
    ok = ch2.queue_declare(q, passive=True)
    eq(ok.method.consumer_count, 0, "consumer_count")
    # passive declare of a missing exchange is also 404
    try:
        ch2.exchange_declare(name("missing-ex"), passive=True)
        raise AssertionError("passive declare of a missing exchange succeeded")
    except ChannelClosedByBroker as e:
        eq(e.reply_code, 404, "exchange passive declare reply_code")


def scenario_queue_deleted_while_consuming_cancels(ctx):
    ch = ctx.conn.channel()
    q = ctx.queue(ch, "cancel-notify")
    cancels = []
    got = []
    ch.add_on_cancel_callback(lambda frame: cancels.append(frame.method))
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, b"before-delete")
    wait_until(ctx.conn, lambda: got, "delivery before delete")
    eq(got, [b"before-delete"], "delivery before delete")

    other = ctx.connect().channel()
    ok = other.queue_delete(q)
    eq(ok.method.message_count, 0, "queue.delete-ok message_count")
    wait_until(ctx.conn, lambda: cancels, "basic.cancel from the broker")
    settle(ctx.conn, 0.1)
    eq(len(cancels), 1, "number of basic.cancel notifications")
    eq(cancels[0].consumer_tag, tag, "basic.cancel consumer_tag")
    eq(ch.is_open, True, "channel open after consumer cancellation")
    eq(list(ch.consumer_tags), [], "consumer tags left on the channel")
    # the channel is still usable
    q2 = ctx.queue(ch, "after-cancel")
    eq(message_count(ch, q2), 0, "channel usable after cancel")


def scenario_properties_and_headers_round_trip(ctx):
    ch = ctx.conn.channel()
    q = ctx.queue(ch, "props")
    headers = {
        "str": "hello wörld",
        "empty-str": "",
        "int": 42,
        "negative": -7,
        # pika sends these as 'l' (64-bit) and decodes 'l' as pika.compat.long,
        # so the type also proves the broker did not re-encode them
        "int64": long(2 ** 40 + 3),
        "int64-neg": long(-(2 ** 50)),
        "true": True,
        "false": False,
        "bytes": b"\x00\x01\xfe\xff",
        "timestamp": datetime.datetime(2024, 2, 29, 13, 37, 42, tzinfo=datetime.timezone.utc),
        "decimal": decimal.Decimal("3.14"),
        "void": None,
        "nested": {"a": 1, "b": {"c": "deep", "d": [1, 2]}, "e": {}},
        "array": [1, "two", True, b"\x03", {"x": -1}, [2, [3]], None],
        "empty-array": [],
    }
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="gzip",
        headers=headers,
        delivery_mode=2,
        priority=7,
        correlation_id="corr-1",
        reply_to="reply.queue",
        expiration="600000",
        message_id="msg-42",
        timestamp=1700000000,
        type="order.created",
        user_id=pika.URLParameters(URL).credentials.username,  # must be the login user
        app_id="interop",
    )
    ch.basic_publish("", q, b"{}", properties=props)
    m, p, body = ch.basic_get(q, auto_ack=True)
    if m is None:
        raise AssertionError("message not delivered")
    eq(body, b"{}", "body")
    for field in ("content_type", "content_encoding", "delivery_mode", "priority",
                  "correlation_id", "reply_to", "expiration", "message_id",
                  "timestamp", "type", "user_id", "app_id"):
        eq(getattr(p, field), getattr(props, field), f"property {field}")
    deep_eq(p.headers, headers, "headers")

    # the same through a consumer, and with no properties at all
    got = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append((p, b)), auto_ack=True)
    ch.basic_publish("", q, b"bare")
    ch.basic_publish("", q, b"again", properties=props)
    wait_until(ctx.conn, lambda: len(got) >= 2, "consumer deliveries")
    ch.basic_cancel(tag)
    bare, _ = got[0]
    eq(got[0][1], b"bare", "bare body")
    for field in ("content_type", "headers", "delivery_mode", "priority", "message_id",
                  "timestamp"):
        eq(getattr(bare, field), None, f"bare message property {field}")
    eq(got[1][1], b"again", "second body")
    deep_eq(got[1][0].headers, headers, "headers via basic.deliver")
    eq(got[1][0].timestamp, 1700000000, "timestamp via basic.deliver")


def scenario_large_bodies(ctx):
    ch = ctx.conn.channel()
    q = ctx.queue(ch, "large")
    frame_max = ctx.conn._impl.params.frame_max  # negotiated value
    sizes = [0, 1, frame_max - 8, frame_max - 7, 3 * (frame_max - 8), 1 << 20, (1 << 20) + 13]
    bodies = [os.urandom(s) for s in sizes]
    for b in bodies:
        ch.basic_publish("", q, b)
    for s, b in zip(sizes, bodies):
        m, _, got = ch.basic_get(q, auto_ack=True)
        if m is None:
            raise AssertionError(f"{s}-byte message missing")
        eq(len(got), s, f"length of {s}-byte body")
        if got != b:
            raise AssertionError(f"{s}-byte body differs")
    # 1 MiB through a consumer as well
    big = os.urandom(1 << 20)
    got = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, big)
    wait_until(ctx.conn, lambda: got, "1 MiB delivery")
    ch.basic_cancel(tag)
    eq(len(got[0]), 1 << 20, "consumed 1 MiB body length")
    if got[0] != big:
        raise AssertionError("consumed 1 MiB body differs")


def scenario_unacked_requeued_on_channel_close(ctx):
    ch = ctx.conn.channel()
    q = ctx.queue(ch, "requeue-close")
    for i in range(5):
        ch.basic_publish("", q, f"u-{i}".encode())
    got = []
    ch.basic_qos(prefetch_count=3)
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=False)
    wait_until(ctx.conn, lambda: len(got) >= 3, "3 deliveries")
    settle(ctx.conn, 0.1)
    eq(got, [b"u-0", b"u-1", b"u-2"], "deliveries before close")
    ch.close()  # 3 unacked go back to the queue
    ch2 = ctx.conn.channel()
    wait_count(ch2, q, 5)  # all back after channel close
    out = []
    for _ in range(5):
        m, _, body = ch2.basic_get(q, auto_ack=True)
        out.append((body, m.redelivered))
    eq(out, [(b"u-0", True), (b"u-1", True), (b"u-2", True), (b"u-3", False), (b"u-4", False)],
       "order and redelivered flags after requeue")

    # same for a closed connection, with basic_get deliveries
    conn2 = ctx.connect()
    ch3 = conn2.channel()
    ch2.basic_publish("", q, b"g-0")
    ch2.basic_publish("", q, b"g-1")
    # Publishes on one connection are not ordered before a get on another: wait for them.
    wait_count(ch2, q, 2)
    m, _, body = ch3.basic_get(q, auto_ack=False)
    eq(body, b"g-0", "get before connection close")
    conn2.close()
    wait_count(ch2, q, 2)
    m, _, body = ch2.basic_get(q, auto_ack=True)
    eq((body, m.redelivered, m.message_count), (b"g-0", True, 1), "requeued after connection close")
    m, _, body = ch2.basic_get(q, auto_ack=True)
    eq((body, m.redelivered, m.message_count), (b"g-1", False, 0), "untouched message")


def scenario_precondition_failures_406(ctx):
    ch = ctx.conn.channel()
    q = ctx.queue(ch, "precond", durable=False)

    def expect_close(op, code, what):
        c = ctx.conn.channel()
        try:
            op(c)
        except ChannelClosedByBroker as e:
            eq(e.reply_code, code, f"{what}: reply_code ({e.reply_text})")
        else:
            raise AssertionError(f"{what}: broker accepted it")
        eq(c.is_closed, True, f"{what}: channel closed")

    expect_close(lambda c: c.queue_declare(q, durable=True), 406, "redeclare with other durable")
    ex = ctx.exchange(ch, "precond-ex", "direct")
    expect_close(lambda c: c.exchange_declare(ex, exchange_type="fanout"), 406,
                 "redeclare exchange with other type")
    ch.basic_publish("", q, b"x")
    expect_close(lambda c: c.queue_delete(q, if_empty=True), 406, "delete if_empty of non-empty")
    cons = ctx.conn.channel()
    cons.basic_consume(q, lambda *a: None, auto_ack=False)
    expect_close(lambda c: c.queue_delete(q, if_unused=True), 406, "delete if_unused of used")
    # an unknown ack tag is a channel error too
    expect_close(lambda c: (c.basic_ack(999), c.queue_declare(q, passive=True)), 406,
                 "ack of unknown delivery tag")
    # nothing above changed the queue
    eq(ch.queue_declare(q, passive=True).method.consumer_count, 1, "consumer_count")
    eq(ctx.conn.is_open, True, "connection open")


def scenario_purge_and_delete_counts(ctx):
    ch = ctx.conn.channel()
    q = ctx.queue(ch, "purge")
    for i in range(7):
        ch.basic_publish("", q, b"p")
    eq(ch.queue_purge(q).method.message_count, 7, "purge-ok message_count")
    eq(message_count(ch, q), 0, "message_count after purge")
    for i in range(3):
        ch.basic_publish("", q, b"d")
    eq(ch.queue_delete(q).method.message_count, 3, "delete-ok message_count")
    try:
        ch.queue_declare(q, passive=True)
        raise AssertionError("deleted queue still exists")
    except ChannelClosedByBroker as e:
        eq(e.reply_code, 404, "passive declare after delete")


def scenario_heartbeats_keep_idle_connection_alive(ctx):
    params = pika.URLParameters(URL)
    params.connection_attempts = 1
    params.heartbeat = 1  # client asks for 1 s; both sides use min(client, server)
    conn = pika.BlockingConnection(params)
    ctx.conns.append(conn)
    eq(conn._impl.params.heartbeat, 1, "negotiated heartbeat")
    ch = conn.channel()
    q = ctx.queue(ch, "heartbeat")
    # idle for 3.5 heartbeat intervals; pika itself only gives up after 6+ s
    # of silence, so count the heartbeat frames the broker sent instead
    checker = conn._impl._heartbeat_checker
    before = checker._heartbeat_frames_received
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    eq(conn.is_open, True, "connection open after idling")
    received = checker._heartbeat_frames_received - before
    if received < 2:
        raise AssertionError(
            f"broker sent {received} heartbeat frames in 3.5 s with heartbeat=1 (expected >= 2)")
    ch.basic_publish("", q, b"alive")
    m, _, body = ch.basic_get(q, auto_ack=True)
    eq(body, b"alive", "round trip after idling")


def scenario_many_channels(ctx):
    chans = [ctx.conn.channel() for _ in range(50)]
    eq(len({c.channel_number for c in chans}), 50, "distinct channel numbers")
    q = ctx.queue(chans[0], "many-channels")
    for i, c in enumerate(chans):
        c.basic_publish("", q, f"ch-{c.channel_number}".encode())
    # Publishes on different channels are not ordered before this declare: wait for them.
    wait_count(chans[0], q, 50)
    for c in chans[1::2]:
        c.close()
    eq(sum(c.is_open for c in chans), 25, "channels still open")
    got = drain(chans[-2], q)
    eq(sorted(got), sorted(f"ch-{c.channel_number}".encode() for c in chans), "bodies")


def scenario_tx_move_commit_and_rollback(ctx):
    """Read-process-write in a transaction: publish to two queues and ack the source, then
    commit; a rolled-back move changes nothing and leaves the source message unacked."""
    ch = ctx.conn.channel()
    src = ctx.queue(ch, "tx-src", durable=True)
    dst_a = ctx.queue(ch, "tx-a", durable=True)
    dst_b = ctx.queue(ch, "tx-b", durable=True)
    persistent = pika.BasicProperties(delivery_mode=2)
    for i in range(4):
        ch.basic_publish("", src, f"job-{i}".encode(), properties=persistent)
    tch = ctx.conn.channel()
    tch.tx_select()
    for i in range(2):
        m, _p, body = tch.basic_get(src, auto_ack=False)
        eq(body, f"job-{i}".encode(), "moved body")
        tch.basic_publish("", dst_a, body, properties=persistent)
        tch.basic_publish("", dst_b, body, properties=persistent)
        eq(message_count(ch, dst_a), i, "publish invisible before commit")
        tch.basic_ack(m.delivery_tag)
        tch.tx_commit()
        eq(message_count(ch, dst_a), i + 1, "visible after commit")
        eq(message_count(ch, dst_b), i + 1, "visible after commit")
    m, _p, body = tch.basic_get(src, auto_ack=False)
    tch.basic_publish("", dst_a, body, properties=persistent)
    tch.basic_ack(m.delivery_tag)
    tch.tx_rollback()
    eq(message_count(ch, dst_a), 2, "rolled-back publish never visible")
    # The rolled-back ack left job-2 unacked: closing the channel requeues it.
    tch.close()
    eq(drain(ch, src), [b"job-2", b"job-3"], "source after commit and rollback")
    eq(drain(ch, dst_a), [b"job-0", b"job-1"], "dst a")
    eq(drain(ch, dst_b), [b"job-0", b"job-1"], "dst b")
    ch2 = ctx.conn.channel()
    try:
        ch2.tx_commit()
        raise AssertionError("tx.commit without tx.select succeeded")
    except pika.exceptions.ChannelClosedByBroker as e:
        eq(e.reply_code, 406, "tx.commit without select")


def scenario_queue_length_limits(ctx):
    ch = ctx.conn.channel()
    ch.confirm_delivery()
    # reject-publish: what does not fit is nacked (pika raises NackError)
    q = ctx.queue(ch, "limit-reject", arguments={
        "x-max-length": 2, "x-overflow": "reject-publish"})
    ch.basic_publish("", q, b"r-0")
    ch.basic_publish("", q, b"r-1")
    try:
        ch.basic_publish("", q, b"r-2")
        raise AssertionError("publish over x-max-length was acked")
    except pika.exceptions.NackError:
        pass
    eq(message_count(ch, q), 2, "queue at its limit")
    # a delivered but unacked message does not count
    m, _p, body = ch.basic_get(q, auto_ack=False)
    eq(body, b"r-0", "first held")
    ch.basic_publish("", q, b"r-3")
    ch.basic_ack(m.delivery_tag)
    eq(drain(ch, q), [b"r-1", b"r-3"], "reject-publish survivors")
    # drop-head (the default): the oldest go, every publish is acked
    q = ctx.queue(ch, "limit-drop", arguments={"x-max-length-bytes": 25})
    for i in range(5):
        ch.basic_publish("", q, bytes([i]) * 10)
    eq(drain(ch, q), [bytes([3]) * 10, bytes([4]) * 10], "drop-head survivors")
    # a negative limit is refused at declare
    try:
        ch.queue_declare(name("limit-bad"), arguments={"x-max-length": -1})
        raise AssertionError("x-max-length -1 accepted")
    except ChannelClosedByBroker as e:
        eq(e.reply_code, 406, "x-max-length -1")


def scenario_message_ttl_and_queue_expiry(ctx):
    ch = ctx.conn.channel()
    # Confirmed publishes are in the queue before it is counted (RabbitMQ counts lazily).
    ch.confirm_delivery()
    q = ctx.queue(ch, "ttl", arguments={"x-message-ttl": 200})
    ch.basic_publish("", q, b"old")
    ch.basic_publish("", q, b"short", pika.BasicProperties(expiration="50"))
    wait_count(ch, q, 0, timeout=5.0)
    ch.basic_publish("", q, b"new")
    eq(drain(ch, q), [b"new"], "fresh message delivered")
    # x-expires: an unused queue is deleted; publishing to it does not count as use.
    ex = name("expires")
    ch.queue_declare(ex, arguments={"x-expires": 300})
    deadline = time.monotonic() + 5
    while True:
        try:
            ch.basic_publish("", ex, b"probe", mandatory=True)
        except UnroutableError:
            break
        if time.monotonic() > deadline:
            raise AssertionError("queue with x-expires 300 ms still routed after 5 s")
        time.sleep(0.02)
    try:
        ctx.conn.channel().queue_declare(ex, passive=True)
        raise AssertionError("expired queue still declared")
    except ChannelClosedByBroker as e:
        eq(e.reply_code, 404, "passive declare of an expired queue")


def scenario_select_connection_confirms_and_consume(ctx):
    """pika's asynchronous adapter: confirms and a manual-ack consumer, all by callbacks."""
    q = name("select")
    n = 50
    state = {"acked": set(), "got": [], "error": None}
    params = pika.URLParameters(URL)

    def fail(why):
        state["error"] = why
        conn.ioloop.stop()

    def on_open(c):
        c.channel(on_open_callback=on_channel)

    def on_channel(ch):
        state["ch"] = ch
        ch.queue_declare(q, callback=lambda _frame: ch.confirm_delivery(on_confirm, on_selected))

    def on_selected(_frame):
        ch = state["ch"]
        for i in range(n):
            ch.basic_publish("", q, f"s-{i}".encode())

    def on_confirm(frame):
        m = frame.method
        if isinstance(m, pika.spec.Basic.Nack):
            return fail(f"nack for {m.delivery_tag}")
        upto = m.delivery_tag
        tags = range(1, upto + 1) if m.multiple else [upto]
        state["acked"].update(tags)
        if len(state["acked"]) == n:
            ch = state["ch"]
            ch.basic_qos(prefetch_count=10,
                         callback=lambda _f: ch.basic_consume(q, on_message))

    def on_message(ch, method, _props, body):
        state["got"].append(body)
        ch.basic_ack(method.delivery_tag)
        if len(state["got"]) == n:
            ch.queue_delete(q, callback=lambda _f: conn.close())

    conn = pika.SelectConnection(params, on_open_callback=on_open,
                                 on_open_error_callback=lambda _c, e: fail(f"open: {e!r}"),
                                 on_close_callback=lambda _c, _r: conn.ioloop.stop())
    conn.ioloop.call_later(15, lambda: fail("timed out"))
    conn.ioloop.start()
    if state["error"]:
        raise AssertionError(state["error"])
    eq(sorted(state["acked"]), list(range(1, n + 1)), "every publish acked once")
    eq(state["got"], [f"s-{i}".encode() for i in range(n)], "consumed in order")


SCENARIOS = [
    scenario_basic_get_100,
    scenario_consume_prefetch_manual_ack,
    scenario_nack_requeue_redelivers,
    scenario_reject_without_requeue_drops,
    scenario_mandatory_unroutable_in_confirm_mode,
    scenario_confirm_100,
    scenario_topic_routing,
    scenario_headers_exchange,
    scenario_exchange_to_exchange_binding,
    scenario_passive_declare_missing_queue_404,
    scenario_queue_deleted_while_consuming_cancels,
    scenario_properties_and_headers_round_trip,
    scenario_large_bodies,
    scenario_unacked_requeued_on_channel_close,
    scenario_precondition_failures_406,
    scenario_purge_and_delete_counts,
    scenario_heartbeats_keep_idle_connection_alive,
    scenario_many_channels,
    scenario_tx_move_commit_and_rollback,
    scenario_queue_length_limits,
    scenario_message_ttl_and_queue_expiry,
    scenario_select_connection_confirms_and_consume,
]


def on_alarm(signum, frame):
    raise ScenarioTimeout(f"scenario exceeded {SCENARIO_TIMEOUT}s")


def main(argv):
    selected = [s for s in SCENARIOS
                if not argv or any(a in s.__name__ for a in argv)]
    signal.signal(signal.SIGALRM, on_alarm)
    passed = failed = 0
    print(f"pika {pika.__version__} against {', '.join(URLS)} (run {RUN})")
    for scenario in selected:
        label = scenario.__name__[len("scenario_"):]
        started = time.monotonic()
        ctx = None
        signal.alarm(SCENARIO_TIMEOUT)
        try:
            ctx = Ctx()
            scenario(ctx)
        except BaseException as e:  # noqa: BLE001 - report everything
            signal.alarm(0)
            if isinstance(e, KeyboardInterrupt):
                raise
            failed += 1
            print(f"FAIL {label} ({time.monotonic() - started:.2f}s): {type(e).__name__}: {e}")
            for line in traceback.format_exc().rstrip().splitlines()[-6:]:
                print(f"    {line}")
        else:
            signal.alarm(0)
            passed += 1
            print(f"ok   {label} ({time.monotonic() - started:.2f}s)")
        finally:
            if ctx is not None:
                signal.alarm(10)
                try:
                    ctx.cleanup()
                except BaseException as e:  # noqa: BLE001
                    print(f"    (cleanup aborted: {e!r})")
                finally:
                    signal.alarm(0)
        sys.stdout.flush()
    print(f"{LABEL}: {passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
