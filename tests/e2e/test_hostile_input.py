"""Hostile and buggy input sent to a real worker: it stays up, dead-letters each bad event with
its reason, applies the valid events around them exactly, and keeps its series, counters and
wallboard tiles under the caps (small ones here, set through the environment)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.adapters.kafka_admin import ensure_topics
from service.adapters.redis_state import RedisState, connect
from service.config import load_settings
from tests.support.engine_state import published
from tests.support.stack import Namespace, Stack, Worker, produce, read_topic, wait_until

pytestmark = pytest.mark.e2e

KINDS = ("call-ended", "transfer", "survey-answered")
ORIGIN = datetime(2026, 5, 4, 8, tzinfo=UTC)  # long before the records' Kafka timestamps
CUSTOMERS = [f"cust-{i}" for i in range(8)]
CALLS_PER_CUSTOMER = 3  # a day apart: the first two are followed by a repeat
QUEUES = 5  # CX_MAX_QUEUES in this test; the traffic uses 24 queue names
SEGMENTS = 3
AGENTS = 4
AGENT_LABELS = 2
TOPICS = 4
NOISY = "0000"  # a placeholder id many contacts share
MAX_CONTACTS = 5
NOISY_CALLS = 12
CAPS = {"CX_MAX_QUEUES": str(QUEUES), "CX_MAX_SEGMENTS": str(SEGMENTS),
        "CX_MAX_AGENTS": str(AGENTS), "CX_METRICS_AGENT_LABELS": str(AGENT_LABELS),
        "CX_MAX_TOPICS": str(TOPICS),
        "CX_MAX_CONTACTS_PER_CUSTOMER": str(MAX_CONTACTS)}


def _at(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _call(customer: str, n: int, i: int, when: datetime, **fields: Any) -> dict[str, Any]:
    """Call `i` of customer number `n`: 24 queue names and as many topics, 6 segments and 9
    agents in all."""
    return {
        "event_id": f"{customer}-e{i}", "occurred_at": _at(when),
        "contact_id": f"{customer}-c{i}", "customer_id": customer,
        "started_at": _at(when - timedelta(minutes=5)), "channel": "voice",
        "queue": f"queue-{n * 3 + i}", "outcome": "handled",
        "agent_id": f"agent-{(n * 3 + i) % 9}", "segment": f"segment-{(n + i) % 6}",
        "topics": [f"topic-{n * 3 + i}", "billing"], "complaint": i == 0, **fields,
    }


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def _poison(customer: str, now: datetime) -> list[tuple[bytes | None, bytes, str]]:
    """(key, value, reason) of each kind of hostile event, for one customer."""
    base = _call(customer, 0, 90, ORIGIN + timedelta(hours=1))

    def bad(n: int, **fields: Any) -> bytes:
        return orjson.dumps({**base, "event_id": f"{customer}-bad{n}",
                             "contact_id": f"{customer}-bad{n}", **fields})

    key = customer.encode()
    # Deeper than orjson writes (254 levels): it once stopped the worker in a crash loop.
    deepest = bad(1, crm="deep").replace(b'"deep"', b"[" * 260 + b"]" * 260)
    return [
        (key, deepest, "too_deep"),
        (key, bad(2, crm={"a": _nested(40)}), "too_deep"),
        (key, bad(3, occurred_at="0001-01-01T00:00:00+23:59",
                  started_at="0001-01-01T00:00:00+23:59"), "bad_timestamp"),
        (key, bad(4, occurred_at="9999-12-31T23:59:59-23:59"), "bad_timestamp"),
        (key, bad(5, occurred_at="9999-12-31T23:59:59Z"), "from_future"),
        (key, bad(6, occurred_at=_at(now + timedelta(hours=3))), "from_future"),
        (b"someone-else", bad(7), "key_mismatch"),
        (None, bad(8), "key_mismatch"),
        (key, bad(9, customer_id=None), "key_mismatch"),  # unidentified: keyed by contact
    ]


def _create_topics(ns: Namespace) -> None:
    asyncio.run(ensure_topics(load_settings(ns.settings_env())))


def _counter_dimensions(ns: Namespace, hours: list[int]) -> set[str]:
    """Every dimension (`queue:x`, ...) with a hash field in the hours' counters in Redis."""

    async def read() -> set[str]:
        state = RedisState(connect(ns.stack.redis_url), ns.name, state_ttl=60, counter_ttl=60,
                           contact_ttl=60)
        try:
            found = await state.read_buckets_by_hour(6, hours)
        finally:
            await state.client.aclose()
        return {f.rpartition("|")[0] for buckets in found.values() for b in buckets for f in b}

    return asyncio.run(read())


def _label_values(worker: Worker, metric: str, label: str) -> set[str]:
    return {dict(labels)[label] for (name, labels) in worker.metrics()
            if name == metric and dict(labels).get(label)}


def test_hostile_events_are_dead_lettered_and_the_rest_applied_exactly(
        stack: Stack, tmp_path: Path) -> None:
    ns = stack.namespace()
    _create_topics(ns)
    now = datetime.now(UTC)
    # Valid traffic, and every kind of poison spread through it on the same partitions.
    records: list[tuple[str, bytes | None, bytes]] = []
    expected: list[str] = []
    valid: list[dict[str, Any]] = []
    for n, customer in enumerate(CUSTOMERS):
        for i in range(CALLS_PER_CUSTOMER):
            event = _call(customer, n, i, ORIGIN + timedelta(days=i, hours=n))
            valid.append(event)
            records.append((ns.topic("call-ended"), customer.encode(), orjson.dumps(event)))
            expected.append("valid")
            if i == 0:
                for key, bad, reason in _poison(customer, now):
                    records.append((ns.topic("call-ended"), key, bad))
                    expected.append(reason)
    # A placeholder id with more contacts than a customer can have, an hour apart: the first
    # MAX_CONTACTS are its own (each but the last unresolved by the next), the others are held
    # apart as unidentified callers' contacts (no repeat, outside the FCR population).
    for i in range(NOISY_CALLS):
        event = _call(NOISY, 1, i, ORIGIN + timedelta(hours=i))
        valid.append(event)
        records.append((ns.topic("call-ended"), NOISY.encode(), orjson.dumps(event)))
        expected.append("valid")
    # 60 KB of extra fields: carried whole on the input topic, stored only up to about 2 KiB.
    bulky = _call(CUSTOMERS[0], 0, 7, ORIGIN + timedelta(days=12), crm_case="X-7",
                  notes="n" * 60_000)
    valid.append(bulky)
    records.append((ns.topic("call-ended"), CUSTOMERS[0].encode(), orjson.dumps(bulky)))
    expected.append("valid")
    metas = asyncio.run(produce(stack.kafka_bootstrap, records))
    poison = {(m.topic, m.partition, m.offset): r
              for m, r in zip(metas, expected, strict=True) if r != "valid"}

    worker = Worker(ns, tmp_path / "worker.log", **CAPS)
    try:
        worker.wait_ready()
        # Published, not only applied: the contact views read below are stored after the
        # commit.
        wait_until(lambda: published(ns, len(valid)), timeout=90,
                   what=f"{len(valid)} valid events applied and published")
        dead = asyncio.run(read_topic(stack.kafka_bootstrap, ns.topic("dead-letter"),
                                      len(poison)))
        got = {}
        for rec in dead:
            body = orjson.loads(rec.value)
            got[(body["topic"], body["partition"], body["offset"])] = body["reason"]
        assert got == poison
        for reason, n in Counter(poison.values()).items():
            assert worker.metric("cx_events_invalid_total", topic=ns.topic("call-ended"),
                                 reason=reason) == n

        # Exactly the valid events, computed independently: per customer, three handled calls
        # a day apart, so the first two are unresolved (a repeat followed) and the last one is
        # not; nothing is too late, though year-9999 events came before them.
        assert worker.metric("cx_events_invalid_total", topic=ns.topic("call-ended"),
                             reason="too_late") == 0
        start = ORIGIN.replace(hour=0)
        end = start + timedelta(days=CALLS_PER_CUSTOMER + 1)
        status, body = worker.get(f"/api/v1/fcr?from={_at(start)}&to={_at(end)}")
        assert status == 200, body
        fcr = json.loads(body)
        assert fcr["total"] == len(CUSTOMERS) * CALLS_PER_CUSTOMER + MAX_CONTACTS
        assert fcr["unresolved"] == (len(CUSTOMERS) * (CALLS_PER_CUSTOMER - 1)
                                     + MAX_CONTACTS - 1)
        for customer in CUSTOMERS:
            status, body = worker.get(f"/api/v1/customers/{customer}")
            assert status == 200, body
            summary = json.loads(body)
            held = [f"{customer}-c{i}" for i in range(CALLS_PER_CUSTOMER)]
            if customer == CUSTOMERS[0]:
                held.append(f"{customer}-c7")
            assert sorted(c["contact_id"] for c in summary["recent_contacts"]) == held
            assert summary["noisy"] is False
            # The watermark is the newest valid event time, not year 10000.
            assert summary["watermark"] <= _at(ORIGIN + timedelta(days=12))

        # The placeholder id is marked noisy, holds MAX_CONTACTS contacts, and is counted.
        status, body = worker.get(f"/api/v1/customers/{NOISY}")
        summary = json.loads(body)
        assert summary["noisy"] is True
        assert len(summary["recent_contacts"]) == MAX_CONTACTS
        held_apart = json.loads(worker.get(f"/api/v1/contacts/{NOISY}-c{NOISY_CALLS - 1}")[1])
        assert held_apart["customer_id"] == NOISY
        assert held_apart["is_repeat"] is False
        assert held_apart["resolution"] is None
        wait_until(lambda: worker.metric("cx_noisy_customers", policy_version="1") == 1,
                   timeout=30, what="the noisy customer counted")
        # The bulky contact: its small extra field is kept, the large one named as left out.
        view = json.loads(worker.get(f"/api/v1/contacts/{CUSTOMERS[0]}-c7")[1])
        assert view["crm_case"] == "X-7"
        assert view["extra_fields_dropped"] == ["notes"]
        assert "notes" not in view

        # Bounded: at most QUEUES queue names (+ other) in counters, series and tiles.
        hours = sorted({int(datetime.fromisoformat(e["occurred_at"]).timestamp()) // 3600 * 3600
                        for e in valid})
        dims = _counter_dimensions(ns, hours)
        queues = {d for d in dims if d.startswith("queue:")}
        assert len({e["queue"] for e in valid}) > QUEUES + 5
        assert "queue:other" in queues
        assert len(queues) <= QUEUES + 1
        assert len({d for d in dims if d.startswith("segment:")}) <= SEGMENTS + 1
        assert len({d for d in dims if d.startswith("agent:")}) <= AGENTS + 1
        topics = {d for d in dims if d.startswith("topic:")}
        assert "topic:other" in topics
        assert len(topics) <= TOPICS + 1
        assert len({d.rpartition(">")[2] for d in dims if d.startswith("queue_topic:")}
                   ) <= TOPICS + 1
        status, body = worker.get(
            f"/api/v1/fcr?from={_at(start)}&to={_at(end)}&queue=other")
        assert json.loads(body)["total"] > 0

        def gauges_ready() -> bool:
            return bool(_label_values(worker, "cx_window_contacts", "queue"))

        wait_until(gauges_ready, timeout=30, what="the business gauges")
        wait_until(lambda: worker.metric("cx_label_values_folded", dimension="queue") > 0,
                   timeout=30, what="folded queue names counted")
        for metric in ("cx_contacts_total", "cx_window_contacts", "cx_fcr_provisional_ratio"):
            assert len(_label_values(worker, metric, "queue")) <= QUEUES + 1, metric
        assert len(_label_values(worker, "cx_window_contacts", "segment")) <= SEGMENTS + 1
        assert worker.metric("cx_label_values_folded", dimension="topic") > 0
        assert len(_label_values(worker, "cx_topic_complaint_ratio", "topic")) <= TOPICS + 1
        agents = _label_values(worker, "cx_window_contacts", "agent")
        assert agents
        assert len(agents) <= AGENT_LABELS + 1
        status, body = worker.get("/api/v1/wallboard")
        tiles = [t["queue"] for t in json.loads(body)["queues"]]
        assert "other" in tiles
        assert len(tiles) <= QUEUES + 1
        assert worker.proc.poll() is None, "the worker stayed up"
    finally:
        assert worker.stop() == 0, worker.logs()
