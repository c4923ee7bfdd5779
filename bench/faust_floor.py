"""The floor under the worker: a Faust app with the worker's consumer settings and batching
(`noack_take`, every event acknowledged after its batch) that does nothing with the events.
Its events/s is the most any Faust worker of this shape can reach on the machine.

Run as `python -m bench.faust_floor` with BENCH_FLOOR_* variables (bench/__main__.py does);
it prints one JSON line {events, seconds, cpu_s} and exits once it consumed them all.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from typing import Any

import faust
import orjson


def main() -> None:
    bootstrap = os.environ["BENCH_FLOOR_BOOTSTRAP"]
    topics = os.environ["BENCH_FLOOR_TOPICS"].split(",")
    total = int(os.environ["BENCH_FLOOR_EVENTS"])
    batch = int(os.environ.get("BENCH_FLOOR_BATCH", "5000"))
    within = float(os.environ.get("BENCH_FLOOR_WITHIN", "0.05"))
    app = faust.App(
        os.environ["BENCH_FLOOR_GROUP"], broker=[f"kafka://{bootstrap}"], store="memory://",
        autodiscover=False, datadir=tempfile.mkdtemp(prefix="cx-floor-"), web_enabled=False,
        topic_disable_leader=True, topic_allow_declare=False,
        consumer_auto_offset_reset="earliest", broker_commit_interval=1.0,
        stream_wait_empty=True)
    source = app.topic(*topics, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw", allow_empty=True)
    seen = 0
    first: list[float] = []

    async def events(stream: Any) -> None:
        nonlocal seen
        async for taken in stream.noack_take(batch, within=within):
            if not first:
                first.extend((time.perf_counter(), time.process_time()))
            seen += len(taken)
            for event in taken:
                await stream.ack(event)
            if seen >= total:
                print(orjson.dumps({"events": seen, "seconds": time.perf_counter() - first[0],
                                    "cpu_s": time.process_time() - first[1]}).decode(),
                      flush=True)
                os._exit(0)

    app.agent(source, name="floor", concurrency=1, sink=None)(events)
    asyncio.set_event_loop(asyncio.new_event_loop())
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    sys.argv = sys.argv[:1]
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
