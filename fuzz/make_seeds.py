#!/usr/bin/env python3
"""Seed corpora for the fuzz targets, from real client traffic.

Runs pika (the Python client) through a recording proxy against a running broker and keeps
what the client sent: each connection's bytes after the protocol header become a `frames`
seed (with a leading knob byte), content-header properties become `properties` seeds, and
tables pika encodes become `tables` seeds. Usage:

    fuzz/make_seeds.py --broker 127.0.0.1:5672   # a warren (or RabbitMQ) with guest/guest

The seeds are committed under fuzz/seeds/; rerun this only to refresh them.
"""
import argparse
import decimal
import os
import socket
import struct
import threading

import pika
from pika import data as pika_data

HERE = os.path.dirname(os.path.abspath(__file__))


def proxy(upstream, recorded):
    """Listen on a free port; forward one connection at a time, recording client bytes."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen()

    def serve():
        while True:
            c, _ = ls.accept()
            u = socket.create_connection(upstream)
            buf = bytearray()
            recorded.append(buf)

            def pump(src, dst, keep):
                try:
                    while chunk := src.recv(65536):
                        if keep is not None:
                            keep.extend(chunk)
                        dst.sendall(chunk)
                except OSError:
                    pass
                finally:
                    for s in (src, dst):
                        try:
                            s.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass

            threading.Thread(target=pump, args=(c, u, buf), daemon=True).start()
            threading.Thread(target=pump, args=(u, c, None), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return ls.getsockname()[1]


def scenarios(port):
    """Client traffic worth seeding with: topology with arguments, headers, confirms, tx."""
    params = pika.ConnectionParameters("127.0.0.1", port, frame_max=4096)
    headers = {"x-match": "any", "n": {"deep": [1, "two", {"three": 3}]}, "b": True}
    with pika.BlockingConnection(params) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare("seed.x", "headers", arguments={"alternate-exchange": "amq.fanout"})
        ch.queue_declare("seed.q", arguments={"x-max-length": 10, "x-message-ttl": 60000,
                                              "x-overflow": "reject-publish"})
        ch.queue_bind("seed.q", "seed.x", arguments=headers)
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                     headers=headers, priority=3, correlation_id="c",
                                     reply_to="r", expiration="5000", message_id="m",
                                     timestamp=1700000000, type="t", app_id="a")
        ch.basic_publish("seed.x", "", b'{"hello": "world"}' * 20, props)
        ch.basic_publish("", "seed.q", b"x" * 20000)  # several body frames
        ch.basic_qos(prefetch_count=5)
        ch.basic_consume("seed.q", lambda *a: None, arguments={"x-priority": 1})
        conn.process_data_events(time_limit=0.2)
        ch.queue_delete("seed.q")
        ch.exchange_delete("seed.x")
    with pika.BlockingConnection(params) as conn:
        ch = conn.channel()
        ch.tx_select()
        ch.queue_declare("", exclusive=True)
        ch.basic_publish("amq.topic", "a.b.c", b"t")
        ch.tx_commit()
        ch.basic_recover(requeue=True)


def frames(stream):
    """Split recorded client bytes (after the 8-byte header) into (type, payload)."""
    at = 8
    while at + 7 <= len(stream):
        kind, _, size = struct.unpack(">BHI", stream[at:at + 7])
        yield kind, stream[at + 7:at + 7 + size]
        at += 8 + size


def write(kind, name, data):
    d = os.path.join(HERE, "seeds", kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", default="127.0.0.1:5672")
    a = ap.parse_args()
    host, port = a.broker.rsplit(":", 1)
    recorded = []
    scenarios(proxy((host, int(port)), recorded))
    for i, stream in enumerate(recorded):
        for knob in (0, 1):  # frame_max 4096 / 131072 in the frames target
            write("frames", f"pika-{i}-{knob}", bytes([knob | 0x10]) + bytes(stream[8:]))
        for j, (kind, payload) in enumerate(frames(stream)):
            if kind == 2:
                write("properties", f"pika-{i}-{j}", bytes(payload[12:]))
    tables = [
        {},
        {"x-match": "all", "a": 1, "b": "two"},
        {"capabilities": {"publisher_confirms": True, "basic.nack": True}, "product": "pika"},
        {"n": [1, decimal.Decimal("2.5"), None, {"k": [b"bytes", -1]}], "big": 2**40},
    ]
    for i, t in enumerate(tables):
        parts = []
        pika_data.encode_table(parts, t)
        write("tables", f"pika-{i}", bytes([8]) + b"".join(parts))
    parts = []
    pika_data.encode_table(parts, {"LOGIN": "guest", "PASSWORD": "guest"})
    write("sasl", "amqplain", b"".join(parts)[4:])
    write("sasl", "plain", b"\0guest\0guest")
    write("topic", "hashes", b"a.b.c.d\n#\na.#\n*.b.#\n#.d\na.*.*.d")
    write("topic", "empty", b"\n#\n*\n")


if __name__ == "__main__":
    main()
