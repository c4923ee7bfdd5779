"""The ingest loop (service_layer/ingest.py) on in-memory ports: batches applied and published
once, write conflicts redone, dependency failures retried without skipping anything, and the
events that make a batch fail quarantined while every other event is applied exactly."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from service.adapters.metrics import PipelineMetrics
from service.domain.partition import PartitionCommit
from service.domain.policy import Policy
from service.domain.validation import DoorLimits
from service.service_layer.ingest import IngestProcessor, IngestSettings, InputMessage
from service.service_layer.outbox import Topics
from service.service_layer.partition_step import StepRules
from service.service_layer.ports import ProcessingDefect
from service.service_layer.state_cache import StateCache
from tests.unit.builders import at, ts
from tests.unit.memory_store import MemorySink, MemoryStore, Unavailable

P = 3  # the input partition
TOPICS = Topics("dead-letter", "contact-enriched", "customer-alerts")
KINDS = {"call-ended": "call-ended", "transfer": "transfer", "survey-answered": "survey-answered"}


def _deep(levels: int) -> bytes:
    """JSON nested `levels` deep, written by hand (orjson writes at most 254 levels)."""
    return b'{"x":' * levels + b'"bottom"' + b"}" * levels


class Feed:
    """call-ended messages of partition P, with offsets counted by the feed."""

    def __init__(self) -> None:
        self.offset = -1

    def call(self, contact: str, hours: float, customer: str, deep: bytes = b"",
             **extra: Any) -> InputMessage:
        """`deep`: JSON put in the event's field `extra` as it is."""
        self.offset += 1
        event = {"event_id": f"{contact}-ended", "occurred_at": at(hours),
                 "contact_id": contact, "customer_id": customer, "started_at": at(hours - 0.1),
                 "channel": "voice", "queue": "billing", "outcome": "handled",
                 "agent_id": "agent-1", "wait_seconds": 30.0, **extra}
        value = orjson.dumps(event)
        if deep:
            value = value[:-1] + b',"extra":' + deep + b"}"
        return InputMessage("call-ended", P, self.offset, customer.encode(), value, None)


def _processor(store: MemoryStore, sink: MemorySink, cache: StateCache | None = None,
               fold_in_thread: bool = False) -> tuple[IngestProcessor, PipelineMetrics]:
    metrics = PipelineMetrics(list(KINDS))
    settings = IngestSettings(
        topics=TOPICS, rules=StepRules(policy=Policy(), topic_kinds=KINDS,
                                       input_topics=("call-ended",)),
        max_event_bytes=1 << 20, retry_max_backoff=0.01,
        # deep enough to let a value through that cannot be written back (orjson: 254 levels)
        door=DoorLimits(max_depth=400))
    return IngestProcessor(store=store, sink=sink, metrics=metrics, settings=settings,
                           cache=cache, fold_in_thread=fold_in_thread), metrics


def _views(sink: MemorySink) -> dict[str, list[dict[str, Any]]]:
    """Every enriched view published, per contact, in order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for _, key, value in sink.on(TOPICS.contact_enriched):
        assert key is not None
        assert value is not None
        out.setdefault(key.decode(), []).append(orjson.loads(value))
    return out


def _value(metric: Any) -> float:
    return float(metric._value.get())


def _batches(feed: Feed) -> list[list[InputMessage]]:
    return [[feed.call("c1", 0, "cust-1"), feed.call("c2", 0.5, "cust-2")],
            [feed.call("c3", 2, "cust-1"), feed.call("c4", 30, "cust-3")]]


def _run(processor: IngestProcessor, batches: list[list[InputMessage]]) -> None:
    async def go() -> None:
        for batch in batches:
            await processor.process(batch)
    asyncio.run(go())


def _reference() -> tuple[MemoryStore, MemorySink]:
    """What a processor that never met a failure stores and publishes for `_batches`."""
    store, sink = MemoryStore(), MemorySink()
    _run(_processor(store, sink)[0], _batches(Feed()))
    return store, sink


def _stored(store: MemoryStore) -> dict[str, Any]:
    part = store.partition(P)
    clock = {k: v for k, v in part.clock.items() if k not in ("seq", "w")}
    return {"states": part.states, "timers": part.timers, "hours": part.hours, "clock": clock,
            "outbox": part.outbox, "contacts": store.contacts}


def test_a_batch_is_applied_committed_published_and_its_outbox_trimmed() -> None:
    store, sink = MemoryStore(), MemorySink()
    processor, metrics = _processor(store, sink)
    feed = Feed()
    first, second = _batches(feed)
    outcome = asyncio.run(processor.process(first))
    assert (outcome.applied, outcome.duplicates, outcome.updates) == (2, 0, 2)
    outcome = asyncio.run(processor.process(second))
    views = _views(sink)
    assert views["c3"][0]["is_repeat"] is True
    assert views["c3"][0]["repeat_of"] == "c1"
    assert views["c2"][0]["is_repeat"] is False
    assert store.partition(P).outbox == []  # published, then trimmed
    assert store.clock(P).offsets == {"call-ended": 3}
    assert set(store.contacts) == {"c1", "c2", "c3", "c4"}
    assert store.contacts["c3"][0] == views["c3"][-1]["version"]
    published = len(sink.records)
    # Kafka delivers the second batch again (a restart before its acknowledgement)
    again = asyncio.run(processor.process(second))
    assert (again.applied, again.duplicates) == (0, 2)
    assert len(sink.records) == published
    assert _value(metrics.duplicates_by_topic["call-ended"]) == 2


def test_a_partition_written_by_another_worker_is_read_again_and_redone() -> None:
    store, sink = MemoryStore(), MemorySink()
    cache = StateCache(1 << 24, state_ttl=3600)
    processor, metrics = _processor(store, sink, cache)
    first, second = _batches(Feed())
    asyncio.run(processor.process(first))
    assert cache.take(P, ["c:cust-1"])  # held in memory after its commit
    writes = 0

    async def another_worker(commits: Mapping[int, PartitionCommit]) -> None:
        nonlocal writes
        if writes == 0:
            store.write_behind(P)
        writes += 1

    store.before_commit = another_worker
    outcome = asyncio.run(processor.process(second))
    assert writes == 2  # the conflicting commit, then the redo
    assert outcome.applied == 2
    assert cache.invalidations == 1
    # The redo read the states from the store: what a processor without conflict holds.
    reference, ref_sink = _reference()
    assert _stored(store) == _stored(reference)
    assert _views(sink) == _views(ref_sink)
    assert _value(metrics.state_reads_redis) >= 1


@pytest.mark.parametrize("operation", ["load", "commit", "finish_outbox", "send"])
def test_a_dependency_that_fails_is_retried_and_nothing_is_skipped_or_doubled(
        operation: str) -> None:
    store, sink = MemoryStore(), MemorySink()
    processor, metrics = _processor(store, sink)
    failures = [Unavailable(f"{operation} down"), Unavailable(f"{operation} still down")]
    if operation == "send":
        sink.failures = failures
    else:
        store.failures[operation] = failures
    _run(processor, _batches(Feed()))
    name = "kafka" if operation == "send" else "redis"
    assert _value(metrics.retries.labels(name)) == 2
    assert _value(metrics.dependency_up.labels(name)) == 1  # reachable again
    assert processor.healthy[name]
    reference, ref_sink = _reference()
    assert _stored(store) == _stored(reference)
    assert sink.records == ref_sink.records


def test_a_failure_waiting_cannot_cure_and_no_event_causes_stops_without_writing() -> None:
    store, sink = MemoryStore(), MemorySink()
    processor, _ = _processor(store, sink)
    store.failures["commit"] = [RuntimeError("the commit script is missing")] * 50
    with pytest.raises(ProcessingDefect, match="commit script is missing"):
        asyncio.run(processor.process(_batches(Feed())[0]))
    assert sink.records == []
    assert store.commits == 0
    assert store.clock(P).offsets == {}


def test_the_event_that_makes_a_batch_fail_is_quarantined_and_the_others_applied() -> None:
    store, sink = MemoryStore(), MemorySink()
    cache = StateCache(1 << 24, state_ttl=3600)
    processor, metrics = _processor(store, sink, cache)
    feed = Feed()
    first = _batches(feed)[0]
    feed.offset = 1
    c3 = feed.call("c3", 2, "cust-1")
    poison = feed.call("c5", 2.5, "cust-2", deep=_deep(260))  # cannot be written back
    c4 = feed.call("c4", 30, "cust-3")
    _run(processor, [first, [c3, poison, c4]])
    dead = [orjson.loads(v or b"") for _, _, v in sink.on(TOPICS.dead_letter)]
    assert [(d["offset"], d["reason"]) for d in dead] == [(poison.offset, "processing_error")]
    assert dead[0]["message"].startswith("call-ended: TypeError")
    assert _value(metrics.invalid_by_topic_reason[("call-ended", "processing_error")]) == 1
    # Everything else is as if the poison had never come (but its offset is read).
    reference, ref_sink = _reference()
    assert _stored(store)["states"] == _stored(reference)["states"]
    assert _stored(store)["hours"] == _stored(reference)["hours"]
    assert _views(sink) == _views(ref_sink)
    assert store.clock(P).offsets == {"call-ended": c4.offset}


def test_events_of_a_customer_whose_stored_state_cannot_be_read_are_dead_lettered() -> None:
    store, sink = MemoryStore(), MemorySink()
    processor, _ = _processor(store, sink)
    store.partition(P).states["c:cust-2"] = b"{not json"
    feed = Feed()
    batch = [feed.call("c1", 0, "cust-1"), feed.call("c2", 0.5, "cust-2"),
             feed.call("c3", 1, "cust-2"), feed.call("c4", 1.5, "cust-3")]
    outcome = asyncio.run(processor.process(batch))
    assert (outcome.applied, outcome.quarantined) == (2, 2)
    dead = [orjson.loads(v or b"") for _, _, v in sink.on(TOPICS.dead_letter)]
    assert [d["event_id"] for d in dead] == ["c2-ended", "c3-ended"]
    assert all("UndecodableState" in d["message"] for d in dead)
    assert set(_views(sink)) == {"c1", "c4"}
    assert store.partition(P).states["c:cust-2"] == b"{not json"  # left for inspection


def test_a_record_the_broker_refuses_as_too_large_is_replaced_by_a_dead_letter() -> None:
    store, sink = MemoryStore(), MemorySink(limit=600)
    processor, metrics = _processor(store, sink)
    feed = Feed()
    asyncio.run(processor.process([feed.call("c1", 0, "cust-1", notes="n" * 2000),
                                   feed.call("c2", 0, "cust-2")]))
    assert set(_views(sink)) == {"c2"}
    stubs = [orjson.loads(v or b"") for _, _, v in sink.on(TOPICS.dead_letter)]
    assert [(s["topic"], s["key"], s["truncated"]) for s in stubs] == [
        (TOPICS.contact_enriched, "c1", True)]
    assert _value(metrics.outputs_too_large.labels(TOPICS.contact_enriched)) == 1
    assert store.partition(P).outbox == []


def test_the_latest_contacts_are_those_of_the_last_hour_before_the_watermark() -> None:
    store, sink = MemoryStore(), MemorySink()
    processor, _ = _processor(store, sink)
    feed = Feed()
    # two contacts before the last hour, three in it (the newest sets the watermark)
    asyncio.run(processor.process([feed.call("old-1", 0, "cust-1"),
                                   feed.call("old-2", 1.5, "cust-2")]))
    # the watermark is 1.5 h: the contact at 0 h is older than its last hour
    assert list(store.partition(P).recent.values()) == [ts(1.5)]
    asyncio.run(processor.process([feed.call("new-1", 2.6, "cust-1", queue="sales"),
                                   feed.call("new-2", 3.0, "cust-3"),
                                   feed.call("new-3", 3.5, "cust-2")]))
    latest = {tuple(orjson.loads(m)): t for m, t in store.partition(P).recent.items()}
    assert latest == {("sales", "new-1"): ts(2.6), ("billing", "new-2"): ts(3.0),
                      ("billing", "new-3"): ts(3.5)}


def test_the_event_loop_runs_while_a_batch_is_decoded_folded_settled_and_encoded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's decoding of the events, folding, settling and encoding of the states run
    outside the event loop's thread: a coroutine on the loop makes progress while each runs
    (here each waits for it), and the batch's result is the same as without the wait."""
    from service.service_layer import ingest

    steps = ("decode", "fold", "settle", "encode")
    loop_ran = {step: threading.Event() for step in steps}  # set by the loop
    entered: dict[str, asyncio.Event] = {}  # set for the loop when a step has started
    threads: set[int] = set()
    loops: list[asyncio.AbstractEventLoop] = []

    def waiting(step: str, real: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            if not loop_ran[step].is_set():  # (the reference run below does not wait)
                threads.add(threading.get_ident())
                loops[0].call_soon_threadsafe(entered[step].set)
                assert loop_ran[step].wait(5), f"the event loop did not run during {step}"
            return real(*args, **kwargs)
        return run

    monkeypatch.setattr(ingest, "fold_partition", waiting("fold", ingest.fold_partition))
    monkeypatch.setattr(ingest, "settle_partition", waiting("settle", ingest.settle_partition))
    monkeypatch.setattr(ingest, "decode_event", waiting("decode", ingest.decode_event))
    store, sink = MemoryStore(), MemorySink()
    monkeypatch.setattr(store, "encode", waiting("encode", store.encode))
    processor, _ = _processor(store, sink, fold_in_thread=True)

    async def go() -> None:
        loops.append(asyncio.get_running_loop())
        entered.update({step: asyncio.Event() for step in steps})
        task = asyncio.create_task(processor.process(_batches(Feed())[0]))
        for step in steps:
            started = asyncio.ensure_future(entered[step].wait())
            await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
            assert started.done(), f"the batch ended before {step} started"
            loop_ran[step].set()  # the loop got here while the step waits in its thread
        outcome = await task
        assert (outcome.applied, outcome.updates) == (2, 2)
        assert threads
        assert threading.get_ident() not in threads

    asyncio.run(go())
    # the same batch again, the steps no longer waiting: the same writes and outputs
    reference_store, reference_sink = MemoryStore(), MemorySink()
    _run(_processor(reference_store, reference_sink)[0], [_batches(Feed())[0]])
    assert sink.records == reference_sink.records
    assert _stored(store) == _stored(reference_store)
