"""Reading what the engine stored in Redis, for comparisons between runs."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.adapters.redis_state import RedisState, connect
from tests.support.stack import Namespace, Worker

PARTITIONS = 6


def store_of(ns: Namespace) -> RedisState:
    return RedisState(connect(ns.stack.redis_url), ns.name, state_ttl=60, counter_ttl=60,
                      contact_ttl=60)


def progress(ns: Namespace) -> tuple[int, int, int]:
    """(events applied, outbox entries not yet published, partitions with a timer due)."""

    async def read() -> tuple[int, int, int]:
        store = store_of(ns)
        try:
            clocks = await store.read_clocks(PARTITIONS)
            applied = sum(sum(c.applied.values()) for c in clocks.values())
            outbox = due = 0
            for p, clock in clocks.items():
                outbox += await store.client.llen(store.key(p, "outbox"))
                first = await store.client.zrange(store.key(p, "timers"), 0, 0,
                                                  withscores=True)
                if first and clock.watermark is not None and first[0][1] < clock.watermark:
                    due += 1
            return applied, outbox, due
        finally:
            await store.client.aclose()

    return asyncio.run(read())


def published(ns: Namespace, applied: int) -> bool:
    """All events applied and every outbox published. On one Redis server the contact views
    are then stored too: a commit counts its events and fills the outbox at once, and the views
    are stored in the round trip that trims the outbox, before the trim
    (RedisState.finish_outbox). On a Redis Cluster the keys may be on different nodes, served
    in any order: wait for the views themselves there."""
    done, outbox, _ = progress(ns)
    return (done, outbox) == (applied, 0)


def settled(ns: Namespace, applied: int) -> bool:
    """All events applied, every outbox published, and no timer left due."""
    return progress(ns) == (applied, 0, 0)


def wait_settled(ns: Namespace, applied: int, *, stall: float = 120, what: str = "",
                 worker: Worker | None = None) -> None:
    """Wait until `settled`, for as long as the engine makes progress: fail only when nothing
    changed for `stall` seconds (a slow or busy machine is slow, not stuck)."""
    seen = progress(ns)
    changed = time.monotonic()
    while seen != (applied, 0, 0):
        time.sleep(0.5)
        now = progress(ns)
        if now != seen:
            seen, changed = now, time.monotonic()
        elif time.monotonic() - changed > stall:
            raise AssertionError(
                f"{what or 'settling'}: no progress for {stall:.0f}s at (applied, outbox, "
                f"partitions with a due timer) = {seen}, expected ({applied}, 0, 0)\n"
                f"{diagnosis(ns, worker)}")


def diagnosis(ns: Namespace, worker: Worker | None) -> str:
    """What a stalled run looks like: per input partition the clock's offsets and counts
    against Kafka's end offsets, the worker's event counters, and its last logs."""

    async def read() -> list[str]:
        store = store_of(ns)
        consumer = AIOKafkaConsumer(bootstrap_servers=ns.stack.kafka_bootstrap)
        await consumer.start()
        try:
            kinds = ("call-ended", "transfer", "survey-answered")
            tps = [TopicPartition(ns.topic(k), p) for k in kinds for p in range(PARTITIONS)]
            ends = await consumer.end_offsets(tps)
            lines = []
            for p, clock in sorted((await store.read_clocks(PARTITIONS)).items()):
                for k in kinds:
                    t = ns.topic(k)
                    lines.append(f"partition {p} {k}: end offset {ends[TopicPartition(t, p)]}, "
                                 f"last applied offset {clock.offsets.get(t)}, "
                                 f"applied {clock.applied.get(t)}")
            return lines
        finally:
            await consumer.stop()
            await store.client.aclose()

    # What cannot be read (a server or the worker down) is said, not raised: the stall's own
    # message must reach the test's report.
    try:
        lines = asyncio.run(read())
    except Exception as exc:
        lines = [f"offsets not read: {exc!r}"]
    if worker is not None and worker.proc.poll() is None:
        try:
            metrics = worker.metrics()
        except OSError as exc:
            lines.append(f"metrics not read: {exc!r}")
        else:
            lines += [f"{name} {dict(labels)} = {value}"
                      for (name, labels), value in sorted(metrics.items(), key=str)
                      if name.startswith("cx_events_") and value]
    if worker is not None:
        lines.append(worker.logs())
    return "\n".join(lines)


async def views_and_counters(client: Any, prefix: str) -> tuple[dict[str, Any], Counter[str]]:
    """Every contact's latest view under `prefix` (without its version) and every counter."""
    views = {}
    async for key in client.scan_iter(match=f"{prefix}:contact:*", count=1000):
        view = orjson.loads(await client.hget(key, "j"))
        view.pop("version")
        views[view["contact_id"]] = view
    counters: Counter[str] = Counter()
    async for key in client.scan_iter(match=f"{prefix}:{{p*}}:h:*", count=1000):
        hour = key.decode().rsplit(":", 1)[1]
        for name, n in (await client.hgetall(key)).items():
            if int(n):
                counters[f"{hour}/{name.decode()}"] += int(n)
    return views, counters


def snapshot(ns: Namespace) -> tuple[dict[str, Any], Counter[str], int]:
    """Every contact's latest view (without its version), all counters, events applied."""

    async def read() -> tuple[dict[str, Any], Counter[str], int]:
        store = store_of(ns)
        client = store.client
        try:
            views, counters = await views_and_counters(client, ns.name)
            applied = sum(sum(c.applied.values())
                          for c in (await store.read_clocks(PARTITIONS)).values())
            return views, counters, applied
        finally:
            await client.aclose()

    return asyncio.run(read())
