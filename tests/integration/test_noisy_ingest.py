"""A noisy customer through the pipeline, on a real Redis and Kafka: contacts past the limit
are held apart in states of their own, read back from Redis in later batches (never
overwritten), with or without states kept in memory."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from service.adapters.kafka_admin import ensure_layout
from service.adapters.metrics import PipelineMetrics
from service.adapters.redis_state import RedisState, connect
from service.config import load_settings
from service.service_layer.ingest import IngestProcessor, InputMessage
from service.service_layer.state_cache import StateCache
from tests.support.ingest import KafkaSink, settings_for
from tests.support.stack import Stack
from tests.unit.builders import at

pytestmark = pytest.mark.integration

PARTITION = 2
LIMIT = 3
NOISY = "0000"


def _messages(topic_of: dict[str, str]) -> list[list[InputMessage]]:
    offsets = dict.fromkeys(topic_of, -1)

    def message(kind: str, event: dict[str, Any]) -> InputMessage:
        offsets[kind] += 1
        return InputMessage(topic_of[kind], PARTITION, offsets[kind], NOISY.encode(),
                            orjson.dumps({"customer_id": NOISY, **event}), None)

    def call(contact: str, hours: float) -> InputMessage:
        return message("call-ended", {
            "event_id": f"{contact}-ended", "occurred_at": at(hours), "contact_id": contact,
            "started_at": at(hours - 0.1), "channel": "voice", "queue": "billing",
            "outcome": "handled", "agent_id": "agent-1"})

    transfer = message("transfer", {
        "event_id": "c5-transfer", "occurred_at": at(4.05), "contact_id": "c5",
        "from_queue": "billing", "to_queue": "tech"})
    survey = message("survey-answered", {
        "event_id": "c5-survey", "occurred_at": at(6), "contact_id": "c5", "source": "sms",
        "resolved": False})
    return [[call("c1", 0), call("c2", 1), call("c3", 2)],
            [call("c4", 3), call("c5", 4), transfer],
            [survey, call("c2", 1)]]


async def _run(stack: Stack, cache: StateCache | None) -> dict[str, Any]:
    ns = stack.namespace()
    s = load_settings(ns.settings_env())
    await ensure_layout(s)
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all")
    await producer.start()
    store = RedisState(connect(stack.redis_url), ns.name, state_ttl=3600, counter_ttl=3600,
                       contact_ttl=3600)
    try:
        processor = IngestProcessor(
            store=store, sink=KafkaSink(producer), metrics=PipelineMetrics(s.input_topics),
            settings=settings_for(s, max_contacts=LIMIT), cache=cache)
        topic_of = {kind: ns.topic(kind) for kind in ("call-ended", "transfer",
                                                      "survey-answered")}
        for batch in _messages(topic_of):
            await processor.process(batch)
        keys = [f"c:{NOISY}", "u:c4", "u:c5"]
        data = (await store.load({PARTITION: keys}))[PARTITION]
        states = {k: data.state(k) for k in keys}
        clocks = await store.read_clocks(PARTITION + 1)
        return {"states": {k: None if v is None else v.to_dict() for k, v in states.items()},
                "noisy": clocks[PARTITION].noisy}
    finally:
        await producer.stop()
        await store.client.aclose()


@pytest.mark.parametrize("kept", [False, True], ids=["from-redis", "in-memory"])
def test_contacts_past_the_limit_are_held_apart_across_batches(stack: Stack, kept: bool
                                                                ) -> None:
    cache = StateCache(64 * 1024 * 1024, state_ttl=3600) if kept else None
    found = asyncio.run(_run(stack, cache))
    customer = found["states"][f"c:{NOISY}"]
    assert [c[0] for c in customer["c"]] == ["c1", "c2", "c3"]
    assert customer["n"] is True
    assert found["noisy"] == 1
    c4, c5 = found["states"]["u:c4"], found["states"]["u:c5"]
    assert c4["k"] == NOISY
    assert c4["cu"] is None
    assert [c[0] for c in c4["c"]] == ["c4"]
    # c5's transfer (same batch) and survey (a later batch) joined it in its own state.
    assert [c[0] for c in c5["c"]] == ["c5"]
    assert [t[1] for t in c5["t"]] == ["c5-transfer"]
    assert [v[1] for v in c5["s"]] == ["c5-survey"]


def test_the_same_with_and_without_states_in_memory(stack: Stack) -> None:
    without = asyncio.run(_run(stack, None))
    with_cache = asyncio.run(_run(stack, StateCache(64 * 1024 * 1024, state_ttl=3600)))
    assert without == with_cache
