"""A real worker process against the real Kafka and Redis."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.adapters.kafka_admin import ensure_topics
from service.adapters.redis_state import RedisState, connect
from service.config import load_settings
from service.tools.traffic import TrafficModel
from tests.support.engine_state import snapshot, wait_settled
from tests.support.stack import (
    Namespace,
    Stack,
    Worker,
    committed_offsets,
    end_offsets,
    event_records,
    produce,
    read_topic,
    wait_until,
)

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
CORPUS = json.loads((ROOT / "schemas/examples/corpus.json").read_text())["cases"]
KINDS = ("call-ended", "transfer", "survey-answered")


def _create_topics(ns: Namespace) -> None:
    asyncio.run(ensure_topics(load_settings(ns.settings_env())))


def _applied_in_redis(ns: Namespace) -> dict[str, int]:
    """Events applied per input topic, summed over the partitions' clocks."""

    async def read() -> dict[str, int]:
        state = RedisState(connect(ns.stack.redis_url), ns.name, state_ttl=60, counter_ttl=60,
                           contact_ttl=60)
        try:
            totals: dict[str, int] = {}
            for clock in (await state.read_clocks(6)).values():
                for topic, n in clock.applied.items():
                    totals[topic] = totals.get(topic, 0) + n
            return totals
        finally:
            await state.client.aclose()

    return asyncio.run(read())


def _raw_invalid(ns: Namespace) -> list[tuple[str, bytes | None, bytes | None, str]]:
    """Messages that are not even JSON objects, with the reason each must get."""
    big = orjson.dumps({**CORPUS[0]["event"], "notes": "x" * 70_000})
    return [
        (ns.topic("call-ended"), b"cust-1", b'{"event_id": "broken', "not_json"),
        (ns.topic("transfer"), b"cust-1", b"\xff\xfe\x00binary", "not_json"),
        (ns.topic("survey-answered"), b"cust-1", None, "not_json"),
        (ns.topic("call-ended"), b"cust-1", big, "too_large"),
    ]


def test_valid_counted_invalid_dead_lettered_with_reason(stack: Stack, tmp_path: Path) -> None:
    ns = stack.namespace()
    _create_topics(ns)
    records = event_records(ns, CORPUS)
    expectations = [c["expect"] for c in CORPUS]
    for topic, key, value, reason in _raw_invalid(ns):
        records.append((topic, key, value))  # type: ignore[arg-type]
        expectations.append(reason)
    # The first valid event again: a duplicate must not be applied twice.
    first_valid = next(i for i, c in enumerate(CORPUS) if c["expect"] == "valid")
    records.append(records[first_valid])
    expectations.append("duplicate")
    metas = asyncio.run(produce(stack.kafka_bootstrap, records))

    valid_by_topic = Counter(
        ns.topic(c["kind"]) for c in CORPUS if c["expect"] == "valid"
    )
    invalid_expected = {
        (m.topic, m.partition, m.offset): reason
        for m, reason in zip(metas, expectations, strict=True)
        if reason not in ("valid", "duplicate")
    }

    worker = Worker(ns, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        wait_until(lambda: _applied_in_redis(ns) == dict(valid_by_topic), timeout=60,
                   what=f"valid events applied in Redis: {dict(valid_by_topic)}")
        dead = asyncio.run(read_topic(stack.kafka_bootstrap, ns.topic("dead-letter"),
                                      len(invalid_expected)))
        got = {}
        for rec in dead:
            body = orjson.loads(rec.value)
            got[(body["topic"], body["partition"], body["offset"])] = body
        assert {k: v["reason"] for k, v in got.items()} == invalid_expected
        # Each dead letter carries the original bytes (up to 64 KiB, with the full length and
        # hash) and a message naming the field.
        for meta, (_, key, value) in zip(metas, records, strict=True):
            body = got.get((meta.topic, meta.partition, meta.offset))
            if body is None:
                continue
            original = None if body["value_base64"] is None else base64.b64decode(
                body["value_base64"])
            assert body["truncated"] is (value is not None and len(value) > 65536)
            assert original == (value if value is None else value[:65536])
            assert body["value_bytes"] == (None if value is None else len(value))
            if value is not None:
                assert body["value_sha256"] == hashlib.sha256(value).hexdigest()
            assert body["key"] == (key.decode() if key else None)
            assert body["message"]
        starts_after = next(b for b in got.values() if b["reason"] == "started_after_occurred")
        assert "started_at" in starts_after["message"]

        wait_until(lambda: worker.metric("cx_events_duplicate_total",
                                         topic=ns.topic("call-ended")) == 1, timeout=60,
                   what="the duplicate counted")
        for topic, n in valid_by_topic.items():
            assert worker.metric("cx_events_applied_total", topic=topic) == n
        reasons = Counter((k[0], r) for k, r in invalid_expected.items())
        for (topic, reason), n in reasons.items():
            assert worker.metric("cx_events_invalid_total", topic=topic, reason=reason) == n
        consumed = sum(worker.metric("cx_events_consumed_total", topic=ns.topic(k))
                       for k in KINDS)
        assert consumed == len(records)
    finally:
        assert worker.stop() == 0, worker.logs()


def _traffic(n_hours: float, seed: int) -> list[Any]:
    start = 1_780_000_000.0
    model = TrafficModel(start=start, contacts_per_second=0.4, customers=500, seed=seed,
                         duplicate_share=0.0, malformed_share=0.0)
    return model.advance(start + n_hours * 3600)


SEGMENT_VALUES = '{"gold": 200, "*": 40}'


def _independent_at_risk(messages: list[Any], alerts: list[dict[str, Any]]
                         ) -> dict[str, tuple[str, float, str]]:
    """Customer -> (segment, value, since) of those at risk, by their latest alert; the value
    the latest one their contacts carried (by event time, contact_id, event_id), else their
    segment's in SEGMENT_VALUES; the segment of their latest contact (by time, contact_id)."""
    latest: dict[str, dict[str, Any]] = {}
    for a in alerts:
        if a["version"] > latest.get(a["customer_id"], {"version": 0})["version"]:
            latest[a["customer_id"]] = a
    calls: dict[str, list[dict[str, Any]]] = {}
    for m in messages:
        if m.kind == "call-ended":
            e = orjson.loads(m.value)
            if e["customer_id"] is not None:
                calls.setdefault(e["customer_id"], []).append(e)
    defaults = json.loads(SEGMENT_VALUES)

    def moment(e: dict[str, Any]) -> float:
        return datetime.fromisoformat(e["occurred_at"].replace("Z", "+00:00")).timestamp()

    out = {}
    for customer, alert in latest.items():
        if alert["alert"] != "at_risk_entered":
            continue
        mine = sorted(calls[customer], key=lambda e: (moment(e), e["contact_id"], e["event_id"]))
        segment = max(mine, key=lambda e: (moment(e), e["contact_id"]))["segment"]
        valued = [e["customer_value"] for e in mine if "customer_value" in e]
        value = valued[-1] if valued else defaults.get(segment, defaults["*"])
        out[customer] = (segment, value, alert["at"])
    return out


def _check_at_risk_work_list(stack: Stack, ns: Namespace, worker: Worker,
                             messages: list[Any]) -> None:
    """The work list served, paged, and the value at risk, against the alerts published and
    the events sent."""
    topic = ns.topic("customer-alerts")
    published = sum(asyncio.run(end_offsets(stack.kafka_bootstrap, [topic], 6)).values())
    alerts = [orjson.loads(r.value) for r in
              asyncio.run(read_topic(stack.kafka_bootstrap, topic, published))]
    assert len(alerts) == published
    expected = _independent_at_risk(messages, alerts)
    assert len(expected) > 20, "the traffic puts customers at risk"
    served = []
    for offset in range(0, len(expected) + 100, 100):
        status, body = worker.get(f"/api/v1/customers/at-risk?limit=100&offset={offset}")
        assert status == 200, body
        page = json.loads(body)
        assert page["total"] == len(expected)
        served += page["customers"]
    assert {c["customer_id"]: (c["segment"], c["value"], c["since"]) for c in served} == expected
    assert [c["customer_id"] for c in served] == sorted(
        expected, key=lambda cid: (-round(expected[cid][1] * 100), cid))
    by_score = json.loads(worker.get("/api/v1/customers/at-risk?order=score&limit=500")[1])
    scores = [(c["score"], c["customer_id"]) for c in by_score["customers"]]
    assert scores == sorted(scores)
    assert len(scores) == len(expected)
    gold = json.loads(worker.get("/api/v1/customers/at-risk?segment=gold&limit=500")[1])
    assert {c["customer_id"] for c in gold["customers"]} == {
        cid for cid, (segment, _, _) in expected.items() if segment == "gold"}
    assert gold["total"] == len(gold["customers"])
    assert worker.get("/api/v1/customers/at-risk?order=name")[0] == 400
    cents: dict[str, int] = {}
    for segment, value, _ in expected.values():
        cents[segment] = cents.get(segment, 0) + round(value * 100)
    wait_until(lambda: all(
        worker.metric("cx_value_at_risk", segment=s, policy_version="1") == n / 100
        for s, n in cents.items()), timeout=30, what="cx_value_at_risk refreshed")
    board = json.loads(worker.get("/api/v1/wallboard")[1])
    assert board["centre"]["value_at_risk"] == pytest.approx(sum(cents.values()) / 100)


def test_kill_and_restart_loses_nothing_and_counts_nothing_twice(
    stack: Stack, tmp_path: Path
) -> None:
    ns = stack.namespace()
    _create_topics(ns)
    messages = _traffic(12, seed=11)
    expected = Counter(ns.topic(m.kind) for m in messages)
    assert sum(expected.values()) > 4000
    records = [(ns.topic(m.kind), m.key, m.value) for m in messages]

    worker = Worker(ns, tmp_path / "worker-1.log", CX_BATCH_MAX_EVENTS="50",
                    CX_SEGMENT_VALUES=SEGMENT_VALUES)
    worker.wait_ready()
    # Produce while the worker runs, and kill it -9 in the middle of the stream.
    producer = threading.Thread(
        target=lambda: asyncio.run(produce(stack.kafka_bootstrap, records))
    )
    producer.start()
    wait_until(lambda: sum(_applied_in_redis(ns).values()) > 1000, timeout=60,
               what="part of the stream applied")
    worker.kill()
    applied_at_kill = sum(_applied_in_redis(ns).values())
    producer.join()
    assert applied_at_kill < sum(expected.values())

    restarted = Worker(ns, tmp_path / "worker-2.log", CX_SEGMENT_VALUES=SEGMENT_VALUES,
                       CX_METRICS_REFRESH="1s")
    try:
        restarted.wait_ready()
        wait_until(lambda: _applied_in_redis(ns) == dict(expected), timeout=120,
                   what="every event applied exactly once")
        topics = [ns.topic(k) for k in KINDS]
        ends = asyncio.run(end_offsets(stack.kafka_bootstrap, topics, 6))
        wait_until(
            lambda: asyncio.run(committed_offsets(stack.kafka_bootstrap, ns.name, topics, 6))
            == ends,
            timeout=30, what="offsets committed up to the end",
        )
        wait_settled(ns, len(records), what="outputs published")
        _check_at_risk_work_list(stack, ns, restarted, messages)
    finally:
        assert restarted.stop() == 0, restarted.logs()
    assert _applied_in_redis(ns) == dict(expected)

    # The same stream without a crash must leave exactly the same verdicts and counters.
    calm = stack.namespace()
    _create_topics(calm)
    asyncio.run(produce(stack.kafka_bootstrap,
                        [(calm.topic(m.kind), m.key, m.value) for m in messages]))
    reference = Worker(calm, tmp_path / "calm.log")
    try:
        reference.wait_ready()
        wait_settled(calm, len(records), what="the calm run")
    finally:
        assert reference.stop() == 0, reference.logs()
    views, counters, _ = snapshot(ns)
    calm_views, calm_counters, _ = snapshot(calm)
    assert len(views) == len({orjson.loads(m.value)["contact_id"] for m in messages
                              if m.kind == "call-ended"})
    assert views == calm_views
    assert counters == calm_counters


def test_sigterm_finishes_commits_and_exits_cleanly(stack: Stack, tmp_path: Path) -> None:
    ns = stack.namespace()
    _create_topics(ns)
    messages = _traffic(2, seed=5)
    records = [(ns.topic(m.kind), m.key, m.value) for m in messages]
    asyncio.run(produce(stack.kafka_bootstrap, records))
    worker = Worker(ns, tmp_path / "worker.log")
    worker.wait_ready()
    wait_until(lambda: sum(_applied_in_redis(ns).values()) == len(records), timeout=60,
               what="all events applied")
    assert worker.stop() == 0, worker.logs()
    topics = [ns.topic(k) for k in KINDS]
    committed = asyncio.run(committed_offsets(stack.kafka_bootstrap, ns.name, topics, 6))
    assert committed == asyncio.run(end_offsets(stack.kafka_bootstrap, topics, 6))
    assert "Signal received: 15" in worker.logs()


def test_a_state_it_cannot_read_quarantines_only_its_events(
    stack: Stack, tmp_path: Path
) -> None:
    import redis

    from service.adapters.kafka_publish import partition_of

    ns = stack.namespace()
    _create_topics(ns)
    keys = RedisState.__new__(RedisState)
    keys.prefix = ns.name
    key = keys.state_key(partition_of("cust-broken", 6), "c:cust-broken")
    client = redis.Redis.from_url(stack.redis_url)
    client.set(key, b"{not a state")
    event = {"event_id": "e-broken", "occurred_at": "2026-05-04T10:00:00Z",
             "contact_id": "c-broken", "customer_id": "cust-broken",
             "started_at": "2026-05-04T09:50:00Z", "channel": "voice", "queue": "billing",
             "outcome": "handled", "agent_id": "a1"}
    asyncio.run(produce(stack.kafka_bootstrap,
                        [(ns.topic("call-ended"), b"cust-broken", orjson.dumps(event))]))
    other = {**event, "event_id": "e-ok", "contact_id": "c-ok", "customer_id": "cust-ok"}
    asyncio.run(produce(stack.kafka_bootstrap,
                        [(ns.topic("call-ended"), b"cust-ok", orjson.dumps(other))]))
    worker = Worker(ns, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        # The other customer's event is applied; the broken one's is dead-lettered (after
        # the repair, `cx-stream redrive` sends it back: tests/e2e/test_quarantine.py).
        wait_until(lambda: _applied_in_redis(ns) == {ns.topic("call-ended"): 1}, timeout=60,
                   what="the other customer's event applied")
        (dead,) = asyncio.run(read_topic(stack.kafka_bootstrap, ns.topic("dead-letter"), 1))
        body = orjson.loads(dead.value)
        assert (body["reason"], body["event_id"]) == ("processing_error", "e-broken")
        assert "cannot be decoded" in body["message"]
        assert client.get(key) == b"{not a state"  # left as it was, for inspection
        assert worker.proc.poll() is None
    finally:
        assert worker.stop() == 0, worker.logs()
        client.close()
