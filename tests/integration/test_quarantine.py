"""Quarantine on a real Redis: an event that makes its batch fail is dead-lettered as
`processing_error`, and every other event of the batch is applied exactly as without it.

The poison is put into the decoded event here (an extra field nested 260 levels deep, an event
time in year 1 at +23:59), as if the door had let it through, so that these tests keep holding
whatever the validation rejects."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from service.adapters.codec import encode_state
from service.adapters.metrics import PipelineMetrics
from service.adapters.redis_state import RedisState, connect
from service.config import load_settings
from service.domain.events import ContactEvent, Rejection
from service.service_layer.ingest import IngestProcessor, InputMessage, ProcessingDefect
from service.service_layer.outbox import Topics
from service.service_layer.ports import RecordsTooLarge
from service.service_layer.state_cache import StateCache
from tests.support.ingest import settings_of
from tests.support.stack import Stack
from tests.unit.builders import at

pytestmark = pytest.mark.integration
PARTITION = 4
Record = tuple[str, bytes | None, bytes]


def _deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = {"x": value}
    return value


class Poisoning(IngestProcessor):
    """Turns an event carrying `"poison": "deep"` or `"poison": "year1"` into one that fails
    inside the batch (not at the door)."""

    def _decode(self, msg: InputMessage) -> ContactEvent | Rejection:
        event = super()._decode(msg)
        if isinstance(event, Rejection):
            return event
        poison = event.fields.get("poison")
        if poison == "deep":
            return replace(event, fields={**event.fields, "extra": _deep(260)})  # type: ignore[type-var]
        if poison == "year1":
            odd = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=23, minutes=59)))
            return replace(event, header=replace(event.header, occurred_at=odd))  # type: ignore[type-var]
        return event


class ListSink:
    """Outputs kept in memory; records over `limit` bytes are refused as Kafka would."""

    def __init__(self, limit: int = 1 << 30) -> None:
        self.records: list[Record] = []
        self.limit = limit

    async def send(self, records: Sequence[Record]) -> None:
        refused = {i: len(v) for i, (_, _, v) in enumerate(records) if len(v) > self.limit}
        self.records.extend(r for i, r in enumerate(records) if i not in refused)
        if refused:
            raise RecordsTooLarge(refused, self.limit)

    def is_transient(self, exc: BaseException) -> bool:
        return False

    def dead(self) -> list[dict[str, Any]]:
        return [orjson.loads(v) for t, _, v in self.records if t == "dead-letter"]


class Feed:
    """call-ended messages of one partition, offsets counted by this feed."""

    def __init__(self) -> None:
        self.offset = -1

    def call(self, contact: str, hours: float, customer: str, **extra: Any) -> InputMessage:
        self.offset += 1
        event = {
            "event_id": f"{contact}-ended", "occurred_at": at(hours), "contact_id": contact,
            "customer_id": customer, "started_at": at(hours - 0.1), "channel": "voice",
            "queue": "billing", "outcome": "handled", "agent_id": "agent-1",
            "wait_seconds": 30.0, **extra}
        return InputMessage("call-ended", PARTITION, self.offset, customer.encode(),
                            orjson.dumps(event), None)


class Rig:
    def __init__(self, stack: Stack) -> None:
        self.url = stack.redis_url
        self.stores: list[RedisState] = []

    def store(self, prefix: str) -> RedisState:
        store = RedisState(connect(self.url), prefix, state_ttl=3600, counter_ttl=3600,
                           contact_ttl=3600)
        self.stores.append(store)
        return store

    def processor(self, prefix: str, *, cache: StateCache | None = None,
                  sink: ListSink | None = None) -> tuple[Poisoning, ListSink, PipelineMetrics]:
        sink = sink or ListSink()
        metrics = PipelineMetrics(["call-ended", "transfer", "survey-answered"])
        processor = Poisoning(
            store=self.store(prefix), sink=sink, metrics=metrics,
            settings=settings_of(Topics("dead-letter", "contact-enriched", "customer-alerts"),
                                 {"call-ended": "call-ended"}, input_topics=("call-ended",)),
            cache=cache)
        return processor, sink, metrics

    async def close(self) -> None:
        for store in self.stores:
            await store.client.aclose()


def _prefix() -> str:
    return f"q{uuid.uuid4().hex[:10]}"


async def _stored(store: RedisState, keys: Sequence[str]) -> dict[str, Any]:
    data = (await store.load({PARTITION: list(keys)}))[PARTITION]
    counters = {}
    async for key in store.client.scan_iter(match=store.key(PARTITION, "h:*")):
        counters[key.decode().rsplit(":", 1)[1]] = await store.client.hgetall(key)
    states = {k: None if (s := data.state(k)) is None else s.to_dict() for k in keys}
    return {"states": states, "counters": counters, "watermark": data.clock.watermark,
            "timers": data.due}


def _invalid(metrics: PipelineMetrics, reason: str) -> float:
    return metrics.invalid_by_topic_reason[("call-ended", reason)]._value.get()  # type: ignore[attr-defined, no-any-return]


def _contacts(sink: ListSink) -> dict[str, Any]:
    return {orjson.loads(v)["contact_id"]: orjson.loads(v)
            for t, _, v in sink.records if t == "contact-enriched"}


KEYS = ["c:cust-1", "c:cust-2", "c:cust-3"]


def test_a_poison_event_is_dead_lettered_and_every_other_applied_exactly(stack: Stack) -> None:
    async def scenario() -> None:
        rig = Rig(stack)
        try:
            feed = Feed()
            first = [feed.call("c1", 0, "cust-1"), feed.call("c2", 0.5, "cust-2")]
            second = [feed.call("c4", 1.1, "cust-1"), feed.call("c3", 1, "cust-2", poison="deep"),
                      feed.call("c5", 1.2, "cust-3"), feed.call("c6", 1.3, "cust-2"),
                      feed.call("c7", 30, "cust-3")]
            poison = second[1]
            third = [feed.call("c8", 31, "cust-2")]
            prefix = _prefix()
            cache = StateCache(64 * 1024 * 1024, 3600)
            processor, sink, metrics = rig.processor(prefix, cache=cache)
            await processor.process(first)
            outcome = await processor.process(second)
            assert (outcome.applied, outcome.quarantined) == (4, 1)
            dead = sink.dead()
            assert [(d["offset"], d["reason"]) for d in dead] == [(poison.offset,
                                                                  "processing_error")]
            assert dead[0]["message"] == "call-ended: TypeError: Recursion limit reached"
            assert (dead[0]["topic"], dead[0]["partition"]) == ("call-ended", PARTITION)
            assert dead[0]["event_id"] == "c3-ended"
            assert _invalid(metrics, "processing_error") == 1
            # The states kept in memory are those Redis holds, without the poison.
            held = cache.take(PARTITION, ["c:cust-2"])["c:cust-2"]
            stored = await _stored(rig.store(prefix), KEYS)
            assert encode_state(held) == orjson.dumps(stored["states"]["c:cust-2"])
            await processor.process(third)

            # The same batches without the poison, on a processor that never failed.
            clean, clean_sink, _ = rig.processor(ref := _prefix())
            for batch in (first, [m for m in second if m is not poison], third):
                await clean.process(batch)
            assert await _stored(rig.store(prefix), KEYS) == await _stored(rig.store(ref), KEYS)
            assert _contacts(sink) == _contacts(clean_sink)
            assert "c3" not in _contacts(sink)
            assert len(_contacts(sink)) == 7
        finally:
            await rig.close()

    asyncio.run(scenario())


def test_an_event_time_in_year_zero_utc_is_quarantined_not_a_crash(stack: Stack) -> None:
    async def scenario() -> None:
        rig = Rig(stack)
        try:
            feed = Feed()
            processor, sink, metrics = rig.processor(_prefix())
            await processor.process([feed.call("c1", 0, "cust-1")])  # a watermark exists
            old = feed.call("c2", 1, "cust-2", poison="year1")
            outcome = await processor.process([old, feed.call("c3", 2, "cust-3")])
            assert (outcome.applied, outcome.quarantined) == (1, 1)
            (dead,) = sink.dead()
            assert dead["offset"] == old.offset
            assert dead["reason"] == "processing_error"
            assert dead["message"].startswith("call-ended: ValueError: year 0 is out of range")
            assert set(_contacts(sink)) == {"c1", "c3"}
            assert _invalid(metrics, "processing_error") == 1
        finally:
            await rig.close()

    asyncio.run(scenario())


def test_a_stored_state_that_cannot_be_decoded_stops_only_that_customer(stack: Stack) -> None:
    async def scenario() -> None:
        rig = Rig(stack)
        try:
            feed = Feed()
            prefix = _prefix()
            store = rig.store(prefix)
            await store.client.set(store.state_key(PARTITION, "c:cust-2"), b'{"broken": ')
            processor, sink, metrics = rig.processor(prefix)
            batch = [feed.call("c1", 0, "cust-1"), feed.call("c2", 0.1, "cust-2"),
                     feed.call("c3", 0.2, "cust-3"), feed.call("c4", 0.3, "cust-2"),
                     feed.call("c5", 0.4, "cust-1")]
            outcome = await processor.process(batch)
            assert (outcome.applied, outcome.quarantined) == (3, 2)
            dead = sink.dead()
            assert [d["offset"] for d in dead] == [1, 3]
            assert all("UndecodableState" in d["message"] and "'c:cust-2'" in d["message"]
                       for d in dead)
            assert set(_contacts(sink)) == {"c1", "c3", "c5"}
            assert _invalid(metrics, "processing_error") == 2
            # the broken value is left as it was, for the operator to look at
            assert await store.client.get(store.state_key(PARTITION, "c:cust-2")) == \
                b'{"broken": '
            # and the partition moved on: its clock holds the last offset
            data = (await store.load({PARTITION: []}))[PARTITION]
            assert data.clock.offsets == {"call-ended": 4}
        finally:
            await rig.close()

    asyncio.run(scenario())


def test_a_due_timer_of_a_state_that_cannot_be_decoded_is_dropped(stack: Stack) -> None:
    async def scenario() -> None:
        rig = Rig(stack)
        try:
            feed = Feed()
            prefix = _prefix()
            store = rig.store(prefix)
            processor, sink, metrics = rig.processor(prefix)
            await processor.process([feed.call("c1", 0, "cust-1"), feed.call("c2", 0, "cust-2")])
            data = (await store.load({PARTITION: []}))[PARTITION]
            assert "c:cust-2" in dict(data.due)
            await store.client.set(store.state_key(PARTITION, "c:cust-2"), b"[[[")
            # Weeks later in event time: every timer of the partition falls due.
            outcome = await processor.process([feed.call("c3", 24 * 30, "cust-3")])
            assert outcome.applied == 1
            assert metrics.state_errors._value.get() == 1  # type: ignore[attr-defined]
            data = (await store.load({PARTITION: []}))[PARTITION]
            assert "c:cust-2" not in dict(data.due)
            assert await store.client.get(store.state_key(PARTITION, "c:cust-2")) == b"[[["
            assert "c3" in _contacts(sink)
            assert sink.dead() == []
        finally:
            await rig.close()

    asyncio.run(scenario())


def test_a_due_state_that_fails_to_settle_is_left_and_the_partition_moves_on(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stored state whose settling raises (as an alert built from a contact stored before
    the door checked its time could): its timer is dropped, the rest of the batch applied,
    and the state neither written nor kept in memory half-settled."""
    from service.service_layer import partition_step

    def failing(state: Any, watermark: float, policy: Any, *rest: Any) -> Any:
        if state.customer_id == "cust-2":
            raise ValueError("year 0 is out of range")
        return real(state, watermark, policy, *rest)

    real = partition_step.settle

    async def scenario() -> None:
        rig = Rig(stack)
        try:
            feed = Feed()
            prefix = _prefix()
            store = rig.store(prefix)
            cache = StateCache(64 * 1024 * 1024, 3600)
            processor, sink, metrics = rig.processor(prefix, cache=cache)
            await processor.process([feed.call("c1", 0, "cust-1"), feed.call("c2", 0, "cust-2")])
            before = await store.client.get(store.state_key(PARTITION, "c:cust-2"))
            monkeypatch.setattr(partition_step, "settle", failing)
            outcome = await processor.process([feed.call("c3", 24 * 30, "cust-3")])
            assert outcome.applied == 1
            assert metrics.state_errors._value.get() == 1  # type: ignore[attr-defined]
            data = (await store.load({PARTITION: []}))[PARTITION]
            assert "c:cust-2" not in dict(data.due)
            assert await store.client.get(store.state_key(PARTITION, "c:cust-2")) == before
            assert cache.take(PARTITION, ["c:cust-2"]) == {}
            assert "c3" in _contacts(sink)
            assert sink.dead() == []
        finally:
            await rig.close()

    asyncio.run(scenario())


def test_a_failure_no_event_causes_stops_the_worker_and_writes_nothing(stack: Stack) -> None:
    async def scenario() -> None:
        rig = Rig(stack)
        try:
            feed = Feed()
            processor, sink, metrics = rig.processor(prefix := _prefix())

            async def missing_script(*args: Any, **kwargs: Any) -> set[int]:
                raise RuntimeError("the commit script is missing")

            processor._store.commit = missing_script  # type: ignore[method-assign]
            with pytest.raises(ProcessingDefect, match="commit script is missing"):
                await processor.process([feed.call("c1", 0, "cust-1"),
                                         feed.call("c2", 0, "cust-2", poison="deep")])
            assert sink.records == []
            assert _invalid(metrics, "processing_error") == 0
            data = (await rig.store(prefix).load({PARTITION: []}))[PARTITION]
            assert data.clock.offsets == {}
        finally:
            await rig.close()

    asyncio.run(scenario())


def test_an_output_too_large_for_kafka_becomes_a_small_dead_letter(stack: Stack) -> None:
    async def scenario() -> None:
        rig = Rig(stack)
        try:
            feed = Feed()
            # The state keeps about 2 KiB of fields outside the contract per contact: enough
            # to pass a (small) limit of the sink's.
            processor, sink, metrics = rig.processor(_prefix(), sink=ListSink(limit=2_000))
            batch = [feed.call("c1", 0, "cust-1"),
                     feed.call("c2", 0.1, "cust-2", notes="n" * 1_900),
                     feed.call("c3", 0.2, "cust-3")]
            outcome = await processor.process(batch)
            assert outcome.applied == 3
            # the enriched record of the big contact is replaced by a stub naming it
            assert set(_contacts(sink)) == {"c1", "c3"}
            (stub,) = sink.dead()
            assert stub["topic"] == "contact-enriched"
            assert stub["key"] == "c2"
            assert stub["value_bytes"] > 2_000
            assert stub["value_base64"] is None
            counted = metrics.outputs_too_large.labels("contact-enriched")._value.get()  # type: ignore[attr-defined]
            assert counted == 1
        finally:
            await rig.close()

    asyncio.run(scenario())


def test_settings_carry_the_dead_letter_copy_limit() -> None:
    assert load_settings({}).dead_letter_max_copy == 65536
    assert load_settings({"CX_DEAD_LETTER_MAX_COPY": "1000"}).dead_letter_max_copy == 1000
