"""The Celery + Redis peer for bench/throughput.py: a no-op task with a result backend."""

from __future__ import annotations

import os

from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")

app = Celery("bench_peer", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=16, result_expires=600)


@app.task(name="bench.ping")
def ping() -> bool:
    return True
