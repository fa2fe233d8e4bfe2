"""Celery app for the interop suite: the broker comes from AMQP_URL (as pyamqp://)."""

import os

from celery import Celery

url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
broker = "pyamqp://" + url.split("://", 1)[1]
queue = os.environ.get("CELERY_QUEUE", "interop.celery")

app = Celery("interop", broker=broker, backend="rpc://")
app.conf.update(
    task_default_queue=queue,
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=False,
    worker_hijack_root_logger=False,
)


@app.task
def add(x, y):
    return x + y
