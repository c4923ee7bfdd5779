"""Redis side of the worker: applies a batch of events, one atomic script per input partition.

Every key of one script call carries the partition's hash tag (`{p3}`), so the script touches a
single Redis Cluster slot; all partitions of a batch travel in one pipelined round trip.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

_APPLY_EVENTS_LUA = resources.files("service.adapters").joinpath("lua/apply_events.lua").read_text()


@dataclass(frozen=True, slots=True)
class EventToApply:
    topic: str
    offset: int
    event_id: str


def connect(url: str) -> aioredis.Redis:
    """A client with timeouts: a dead Redis must fail fast so the worker can retry."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=10.0,
        socket_connect_timeout=5.0,
        health_check_interval=15,
        retry_on_timeout=False,
    )


class RedisEventStore:
    def __init__(self, client: aioredis.Redis, key_prefix: str, dedup_seconds: float) -> None:
        self._client = client
        self._prefix = key_prefix
        self._dedup_seconds = max(1, int(dedup_seconds))
        self._apply_events: AsyncScript = client.register_script(_APPLY_EVENTS_LUA)
        self.last_round_trip_seconds = 0.0

    def _key(self, partition: int, name: str) -> str:
        return f"{self._prefix}:{{p{partition}}}:{name}"

    async def apply(
        self, by_partition: Mapping[int, Sequence[EventToApply]]
    ) -> dict[int, list[bool]]:
        """Apply each partition's events; per event, True if applied now, False if a duplicate."""
        pipe = self._client.pipeline(transaction=False)
        order: list[int] = []
        for partition, events in by_partition.items():
            if not events:
                continue
            highest: dict[str, int] = {}
            for event in events:
                highest[event.topic] = max(highest.get(event.topic, -1), event.offset)
            keys = [self._key(partition, "applied"), self._key(partition, "offsets")]
            keys.extend(self._key(partition, f"seen:{e.event_id}") for e in events)
            args: list[str | int] = [self._dedup_seconds, len(highest)]
            for topic, offset in highest.items():
                args.extend((topic, offset))
            args.extend(e.topic for e in events)
            await self._apply_events(keys=keys, args=args, client=pipe)
            order.append(partition)
        if not order:
            return {}
        started = time.perf_counter()
        replies = await pipe.execute()
        self.last_round_trip_seconds = time.perf_counter() - started
        return {p: [bool(flag) for flag in reply] for p, reply in zip(order, replies, strict=True)}

    async def applied_counts(self) -> dict[str, int]:
        """Events applied per topic, summed over every partition."""
        totals: dict[str, int] = {}
        async for key in self._client.scan_iter(match=f"{self._prefix}:{{p*}}:applied", count=500):
            counts = await self._client.hgetall(key)
            for topic, count in counts.items():
                name = topic.decode() if isinstance(topic, bytes) else topic
                totals[name] = totals.get(name, 0) + int(count)
        return totals

    async def applied_offsets(self) -> dict[tuple[str, int], int]:
        """Highest applied offset per (topic, partition)."""
        offsets: dict[tuple[str, int], int] = {}
        async for key in self._client.scan_iter(match=f"{self._prefix}:{{p*}}:offsets", count=500):
            name = key.decode() if isinstance(key, bytes) else key
            partition = int(name.split("{p", 1)[1].split("}", 1)[0])
            for topic, offset in (await self._client.hgetall(key)).items():
                topic_name = topic.decode() if isinstance(topic, bytes) else topic
                offsets[(topic_name, partition)] = int(offset)
        return offsets

    async def ping(self) -> bool:
        return bool(await self._client.ping())
