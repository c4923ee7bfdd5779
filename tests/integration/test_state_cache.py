"""States kept in the worker's memory between batches (service_layer/state_cache.py), on a real
Redis and Kafka: they are used only while Redis still holds exactly them, and every run ends with
what a processor without them stores."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from service.adapters.kafka_admin import ensure_layout
from service.adapters.metrics import PipelineMetrics
from service.adapters.redis_state import RedisState, connect
from service.config import load_settings
from service.domain.partition import PartitionCommit, PartitionData
from service.service_layer.ingest import IngestProcessor, InputMessage, ProcessingDefect
from service.service_layer.state_cache import StateCache
from tests.support.ingest import KafkaSink, settings_for
from tests.support.stack import Namespace, Stack
from tests.unit.builders import at

pytestmark = pytest.mark.integration

KINDS = ("call-ended", "transfer", "survey-answered")
PARTITION = 3


class Feed:
    """Input messages of one partition, with offsets counted per topic."""

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns
        self.offsets = dict.fromkeys(KINDS, -1)

    def call(self, contact: str, hours: float, customer: str = "cust-1") -> InputMessage:
        return self._message("call-ended", customer, {
            "event_id": f"{contact}-ended", "occurred_at": at(hours), "contact_id": contact,
            "customer_id": customer, "started_at": at(hours - 0.1), "channel": "voice",
            "queue": "billing", "outcome": "handled", "agent_id": "agent-1", "reason": None,
            "segment": None, "wait_seconds": 30.0, "hold_seconds": 0.0})

    def transfer(self, contact: str, hours: float, customer: str = "cust-1") -> InputMessage:
        return self._message("transfer", customer, {
            "event_id": f"{contact}-transfer", "occurred_at": at(hours), "contact_id": contact,
            "customer_id": customer, "from_queue": "billing", "to_queue": "tech"})

    def _message(self, kind: str, customer: str, event: dict[str, Any]) -> InputMessage:
        self.offsets[kind] += 1
        return InputMessage(self.ns.topic(kind), PARTITION, self.offsets[kind],
                            customer.encode(), orjson.dumps(event), None)


class GatedState(RedisState):
    """A store whose reads and commits the test orders: `loaded` is set once it has read a
    partition, and each commit first waits for `before_commit` (then sets `committed`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loaded = asyncio.Event()
        self.committed = asyncio.Event()
        self.before_commit: Callable[[], Awaitable[object]] | None = None

    async def load(self, wanted: Mapping[int, Sequence[str]]) -> dict[int, PartitionData]:
        data = await super().load(wanted)
        self.loaded.set()
        return data

    async def commit(self, commits: Mapping[int, PartitionCommit], attempt: int = 0
                     ) -> set[int]:
        if self.before_commit is not None:
            await self.before_commit()
        conflicts = await super().commit(commits, attempt)
        self.committed.set()
        return conflicts


class Rig:
    """Processors on one namespace's Redis prefix and Kafka topics."""

    def __init__(self, stack: Stack) -> None:
        self.ns = stack.namespace()
        self.settings = load_settings(self.ns.settings_env())
        self.stores: list[RedisState] = []

    async def __aenter__(self) -> Rig:
        await ensure_layout(self.settings)
        self.producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap,
                                         acks="all")
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()
        for store in self.stores:
            await store.client.aclose()

    def store(self, prefix: str | None = None, kind: type[RedisState] = RedisState
              ) -> RedisState:
        store = kind(connect(self.ns.stack.redis_url), prefix or self.ns.name,
                     state_ttl=3600, counter_ttl=3600, contact_ttl=3600)
        self.stores.append(store)
        return store

    def processor(self, *, cache: StateCache | None, prefix: str | None = None,
                  lagging: Callable[[str, int, int | None], bool] = lambda t, p, o: False,
                  state: RedisState | None = None) -> tuple[IngestProcessor, PipelineMetrics]:
        s = self.settings
        metrics = PipelineMetrics(s.input_topics)
        processor = IngestProcessor(
            store=state or self.store(prefix), sink=KafkaSink(self.producer), metrics=metrics,
            settings=settings_for(s, lagging=lagging), cache=cache)
        return processor, metrics


def cache() -> StateCache:
    return StateCache(64 * 1024 * 1024, state_ttl=3600)


def from_memory(metrics: PipelineMetrics) -> float:
    return metrics.state_reads_memory._value.get()  # type: ignore[attr-defined, no-any-return]


def from_redis(metrics: PipelineMetrics) -> float:
    return metrics.state_reads_redis._value.get()  # type: ignore[attr-defined, no-any-return]


async def stored(store: RedisState, keys: Sequence[str]) -> dict[str, Any]:
    """The states as Redis holds them, and the counters of the partition."""
    data = (await store.load({PARTITION: list(keys)}))[PARTITION]
    states = {k: data.state(k) for k in keys}
    counters = {}
    async for key in store.client.scan_iter(match=store.key(PARTITION, "h:*")):
        counters[key.decode().rsplit(":", 1)[1]] = await store.client.hgetall(key)
    return {"states": states, "counters": counters, "watermark": data.clock.watermark,
            "offsets": data.clock.offsets, "timers": data.due}


async def reference(rig: Rig, batches: list[list[InputMessage]], keys: Sequence[str]
                    ) -> dict[str, Any]:
    """What a processor keeping no states in memory stores for the same batches in order."""
    prefix = f"ref{uuid.uuid4().hex[:8]}"
    processor, _ = rig.processor(cache=None, prefix=prefix)
    for batch in batches:
        await processor.process(batch)
    return await stored(rig.store(prefix), keys)


def test_held_states_are_used_and_end_as_without_them(stack: Stack) -> None:
    async def scenario() -> None:
        async with Rig(stack) as rig:
            feed = Feed(rig.ns)
            batches = [[feed.call("c1", 0), feed.call("c2", 1, "cust-2")],
                       [feed.call("c3", 30), feed.transfer("c3", 29.9)],
                       [feed.call("c4", 300), feed.call("c5", 301, "cust-2")]]
            processor, metrics = rig.processor(cache=cache())
            for batch in batches:
                await processor.process(batch)
            # cust-1 and cust-2 were read from Redis once, then found in memory
            assert from_memory(metrics) == 3
            keys = ["c:cust-1", "c:cust-2"]
            assert await stored(rig.store(), keys) == await reference(rig, batches, keys)

    asyncio.run(scenario())


def test_states_held_are_not_used_after_another_worker_wrote_the_partition(
        stack: Stack) -> None:
    """Two workers owning the partition in turn: each one's memory is stale after the other's
    commit, so each reads the state again."""

    async def scenario() -> None:
        async with Rig(stack) as rig:
            feed = Feed(rig.ns)
            batches = [[feed.call("c1", 0)], [feed.call("c2", 10)], [feed.call("c3", 20)],
                       [feed.call("c4", 30)]]
            first, first_metrics = rig.processor(cache=cache())
            second, second_metrics = rig.processor(cache=cache())
            for processor, batch in zip((first, second, first, second), batches, strict=True):
                await processor.process(batch)
            assert from_memory(first_metrics) == 0
            assert from_memory(second_metrics) == 0
            keys = ["c:cust-1"]
            expected = await reference(rig, batches, keys)
            assert len(expected["states"]["c:cust-1"].contacts) == 4
            assert await stored(rig.store(), keys) == expected

    asyncio.run(scenario())


def test_a_conflicting_commit_drops_the_held_states_and_redoes_the_batch(
        stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with Rig(stack) as rig:
            feed = Feed(rig.ns)
            first_store = rig.store(kind=GatedState)
            second_store = rig.store(kind=GatedState)
            assert isinstance(first_store, GatedState)
            assert isinstance(second_store, GatedState)
            first, _ = rig.processor(cache=cache(), state=first_store)
            second, second_metrics = rig.processor(cache=cache(), state=second_store)
            await second.process([feed.call("c1", 0)])  # second holds cust-1
            # Both read the partition, then both commit, the first one first: the second
            # one's commit conflicts with it, after its fold changed the state it held.
            second_store.loaded.clear()
            first_store.before_commit = second_store.loaded.wait
            second_store.before_commit = first_store.committed.wait
            await asyncio.gather(first.process([feed.call("c2", 1)]),
                                 second.process([feed.transfer("c1", 0.05)]))
            assert "written by another worker; redoing them" in caplog.text
            # The first try folded into the held cust-1; the redone try read it from Redis.
            assert (from_memory(second_metrics), from_redis(second_metrics)) == (1, 2)
            second_store.before_commit = None
            await second.process([feed.call("c3", 2)])
            # The redone commit is the partition's last: what it left in memory is used.
            assert (from_memory(second_metrics), from_redis(second_metrics)) == (2, 2)
            got = await stored(rig.store(), ["c:cust-1"])
            state = got["states"]["c:cust-1"]
            assert sorted(state.contacts) == ["c1", "c2", "c3"]
            assert [t.event_id for t in state.transfers] == ["c1-transfer"]
            assert got["offsets"] == {rig.ns.topic("call-ended"): 2,
                                      rig.ns.topic("transfer"): 0}

    asyncio.run(scenario())


def test_a_failed_batch_drops_the_held_states(stack: Stack) -> None:
    """The fold changes states in place: a batch that fails after folding must not leave them
    held, or its events would look applied when the batch comes again."""

    async def scenario() -> None:
        async with Rig(stack) as rig:
            feed = Feed(rig.ns)
            failing = [True]

            def lagging(topic: str, partition: int, offset: int | None) -> bool:
                if failing[0]:
                    raise RuntimeError("a defect found while planning")
                return False

            failing[0] = False
            processor, metrics = rig.processor(cache=cache(), lagging=lagging)
            first = [feed.call("c1", 0)]
            await processor.process(first)
            second = [feed.call("c2", 5)]
            failing[0] = True
            with pytest.raises(ProcessingDefect):
                await processor.process(second)
            failing[0] = False
            await processor.process(second)  # Kafka delivers the batch again
            assert from_memory(metrics) == 1  # the first try only
            keys = ["c:cust-1"]
            got = await stored(rig.store(), keys)
            assert sorted(got["states"]["c:cust-1"].contacts) == ["c1", "c2"]
            assert got == await reference(rig, [first, second], keys)

    asyncio.run(scenario())
