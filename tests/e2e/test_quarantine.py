"""Poison events against a real worker: each one is dead-lettered with its reason, every valid
event around it is applied, and the worker stays up; shutdown holds its timeout while a batch
retries; dead letters go back with `cx-stream redrive` once fixed."""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import murmur2

from service.adapters.kafka_admin import ensure_topics
from service.adapters.redis_state import RedisState, connect
from service.config import load_settings
from service.redrive import REDRIVE_HEADER, Selection, redrive
from tests.support.engine_state import PARTITIONS, published
from tests.support.stack import (
    ROOT,
    LocalRedis,
    Namespace,
    Stack,
    Worker,
    produce,
    read_topic,
    wait_until,
)
from tests.unit.builders import at

pytestmark = pytest.mark.e2e
Record = tuple[str, bytes | None, bytes | None]


def _create_topics(ns: Namespace) -> None:
    asyncio.run(ensure_topics(load_settings(ns.settings_env())))


def _partition(key: str) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


def _call(ns: Namespace, contact: str, customer: str, hours: float, **extra: Any) -> Record:
    event = {"event_id": f"{contact}-ended", "occurred_at": at(hours), "contact_id": contact,
             "customer_id": customer, "started_at": at(hours - 0.1), "channel": "voice",
             "queue": "billing", "outcome": "handled", "agent_id": "agent-1", **extra}
    return (ns.topic("call-ended"), customer.encode(), orjson.dumps(event))


def _nested(record: Record, levels: int) -> Record:
    """The record with its field `extra` nested `levels` deep (more than orjson writes)."""
    topic, key, value = record
    assert value is not None
    deep = b'{"x":' * levels + b'"bottom"' + b"}" * levels
    return topic, key, value.replace(b'"extra":"deep"', b'"extra":' + deep)


def _store(ns: Namespace) -> RedisState:
    return RedisState(connect(ns.stack.redis_url), ns.name, state_ttl=60, counter_ttl=60,
                      contact_ttl=60)


def _applied(ns: Namespace) -> int:
    async def read() -> int:
        store = _store(ns)
        try:
            return sum(sum(c.applied.values())
                       for c in (await store.read_clocks(PARTITIONS)).values())
        finally:
            await store.client.aclose()

    return asyncio.run(read())


def _views(ns: Namespace, contacts: list[str]) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        store = _store(ns)
        try:
            out = {}
            for contact in contacts:
                raw = await store.read_contact(contact)
                if raw is not None:
                    out[contact] = orjson.loads(raw)
            return out
        finally:
            await store.client.aclose()

    return asyncio.run(read())


def _dead_letters(ns: Namespace, expected: int) -> list[Any]:
    return asyncio.run(read_topic(ns.stack.kafka_bootstrap, ns.topic("dead-letter"), expected))


def _break_state(ns: Namespace, customer: str) -> None:
    """Store a value no worker can decode as the customer's state."""

    async def write() -> None:
        store = _store(ns)
        try:
            await store.client.set(store.state_key(_partition(customer), f"c:{customer}"),
                                   b'{"contacts": [[')
        finally:
            await store.client.aclose()

    asyncio.run(write())


# Reasons the door may give these events before they reach the quarantine: validation that
# bounds nesting depth and event times rejects them first, which is just as good.
DOOR = {"deep": {"processing_error", "too_deep"}, "year0": {"processing_error", "bad_timestamp"}}


def test_poison_events_are_dead_lettered_and_the_worker_stays_up(
        stack: Stack, tmp_path: Path) -> None:
    ns = stack.namespace()
    _create_topics(ns)
    customers = [f"cust-{i}" for i in range(60)]
    assert {_partition(c) for c in customers} == set(range(PARTITIONS))
    # First, an event for every customer: each partition has a watermark.
    warmup = [_call(ns, f"w-{c}", c, 0) for c in customers]
    asyncio.run(produce(stack.kafka_bootstrap, warmup))
    worker = Worker(ns, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        wait_until(lambda: _applied(ns) == len(warmup), what="the warm-up applied")
        pid = worker.proc.pid
        _break_state(ns, "cust-broken")

        # Then, in one stream: valid events around each poison, on every partition.
        valid: list[Record] = []
        poison: dict[str, list[Record]] = {}
        for round_, (kind, records) in enumerate([
            ("deep", [_nested(_call(ns, "p-deep", "cust-3", 1, extra="deep"), 260)]),
            ("year0", [_call(ns, "p-year0", "cust-4", 1,
                             occurred_at="0001-01-01T00:00:00+23:59",
                             started_at="0001-01-01T00:00:00+23:59")]),
            ("broken", [_call(ns, "p-broken-1", "cust-broken", 1),
                        _call(ns, "p-broken-2", "cust-broken", 1.1)]),
            ("big", [_call(ns, "p-big", "cust-5", 1, notes="n" * 800_000)]),
        ]):
            valid += [_call(ns, f"v{round_}-{c}", c, 1 + round_ / 10) for c in customers]
            poison[kind] = records
            valid += [_call(ns, f"u{round_}-{c}", c, 1.05 + round_ / 10) for c in customers]
        stream = valid[:100] + poison["deep"] + valid[100:200] + poison["year0"] \
            + valid[200:300] + poison["broken"] + valid[300:400] + poison["big"] + valid[400:]
        metas = asyncio.run(produce(stack.kafka_bootstrap, stream,
                                    max_request_size=2 * 1024 * 1024))
        where = {(m.partition, m.offset): r for m, r in zip(metas, stream, strict=True)}

        expected_applied = len(warmup) + len(valid)
        # Published, not only applied: the contact views are stored after the commit.
        wait_until(lambda: published(ns, expected_applied), timeout=90,
                   what="every valid event applied and published")
        contacts = [orjson.loads(v)["contact_id"] for _, _, v in valid if v is not None]
        views = _views(ns, [*contacts, "p-deep", "p-year0", "p-broken-1", "p-big"])
        assert sorted(views) == sorted(contacts)  # every valid contact, no poison one

        dead = _dead_letters(ns, 5)
        assert all(len(d.value) < 200_000 for d in dead)
        got = {}
        for d in dead:
            body = orjson.loads(d.value)
            record = where[(body["partition"], body["offset"])]
            got[orjson.loads(record[2])["contact_id"]] = body
        assert sorted(got) == ["p-big", "p-broken-1", "p-broken-2", "p-deep", "p-year0"]
        assert got["p-deep"]["reason"] in DOOR["deep"]
        assert got["p-year0"]["reason"] in DOOR["year0"]
        assert got["p-broken-1"]["reason"] == got["p-broken-2"]["reason"] == "processing_error"
        assert "cannot be decoded" in got["p-broken-1"]["message"]
        big = got["p-big"]
        assert big["reason"] == "too_large"
        assert big["truncated"] is True
        assert big["value_bytes"] == len(poison["big"][0][2] or b"")
        reasons = Counter(b["reason"] for b in got.values())
        assert worker.metric("cx_events_invalid_total", topic=ns.topic("call-ended"),
                             reason="processing_error") == reasons["processing_error"]
        assert worker.proc.poll() is None
        assert worker.proc.pid == pid
        assert "stopping" not in worker.logs()
    finally:
        assert worker.stop() == 0, worker.logs()


def test_a_dead_letter_over_kafkas_limit_is_replaced_by_a_stub_not_retried_forever(
        stack: Stack, tmp_path: Path) -> None:
    """The copy limit raised to 16 MiB: the dead letter of an 800 KB value (base64, over 1 MB)
    is refused by the producer, and a stub goes out instead of retrying without end."""
    ns = stack.namespace()
    _create_topics(ns)
    big = _call(ns, "big", "cust-1", 0, notes="n" * 800_000)
    records = [_call(ns, "a", "cust-2", 0), big, _call(ns, "b", "cust-3", 0.1)]
    asyncio.run(produce(stack.kafka_bootstrap, records, max_request_size=2 * 1024 * 1024))
    worker = Worker(ns, tmp_path / "worker.log", CX_DEAD_LETTER_MAX_COPY=str(16 * 1024 * 1024))
    try:
        worker.wait_ready()
        wait_until(lambda: _applied(ns) == 2, what="the valid events applied")
        (dead,) = _dead_letters(ns, 1)
        body = orjson.loads(dead.value)
        assert len(dead.value) < 10_000
        assert (body["reason"], body["truncated"], body["value_base64"]) == ("too_large", True,
                                                                           None)
        assert body["value_bytes"] == len(big[2] or b"")
        assert "over the limit of" in body["message"]
        wait_until(lambda: worker.metric("cx_outputs_too_large_total",
                                         topic=ns.topic("dead-letter")) == 1,
                   what="the refused record counted")
        assert worker.metric("cx_dependency_retries_total", dependency="kafka") == 0
    finally:
        assert worker.stop() == 0, worker.logs()


def test_shutdown_holds_its_timeout_while_a_batch_retries(stack: Stack, tmp_path: Path) -> None:
    redis = LocalRedis("single", tmp_path / "redis").start()
    try:
        ns = stack.namespace()
        _create_topics(ns)
        worker = Worker(ns, tmp_path / "worker.log", CX_REDIS_URL=redis.url,
                        CX_SHUTDOWN_TIMEOUT="8s", CX_RETRY_MAX_BACKOFF="1s")
        try:
            worker.wait_ready()
            redis.stop()
            asyncio.run(produce(stack.kafka_bootstrap, [_call(ns, "c1", "cust-1", 0)]))
            wait_until(lambda: worker.metric("cx_dependency_retries_total",
                                             dependency="redis") >= 2,
                       what="the batch retrying while Redis is down")
            started = time.monotonic()
            worker.proc.send_signal(signal.SIGTERM)
            try:
                code = worker.proc.wait(8 + 7)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running 15s after SIGTERM:\n{worker.logs()}")
            assert time.monotonic() - started < 8 + 7
            assert code in (0, 124), worker.logs()
        finally:
            worker.stop()
    finally:
        redis.stop()


def test_a_fixed_dead_letter_goes_back_with_redrive_and_is_applied(
        stack: Stack, tmp_path: Path) -> None:
    ns = stack.namespace()
    _create_topics(ns)
    _break_state(ns, "cust-r")
    records = [_call(ns, "r1", "cust-r", 0), _call(ns, "ok1", "cust-ok", 0)]
    asyncio.run(produce(stack.kafka_bootstrap, records))
    settings = load_settings(ns.settings_env())
    worker = Worker(ns, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        wait_until(lambda: _applied(ns) == 1, what="the valid event applied")
        (dead,) = _dead_letters(ns, 1)
        assert orjson.loads(dead.value)["reason"] == "processing_error"

        # A dry run sends nothing.
        dry = asyncio.run(redrive(settings, Selection(), dry_run=True))
        assert (dry.read, dry.sent) == (1, 1)
        assert asyncio.run(redrive(settings, Selection(reasons=frozenset({"too_late"})),
                                   dry_run=True)).sent == 0

        # Not fixed yet: sent back, dead-lettered again, marked redriven.
        sent = asyncio.run(redrive(settings, Selection(), dry_run=False))
        assert sent.sent == 1
        dead = _dead_letters(ns, 2)
        assert len(dead) == 2
        again = orjson.loads(dead[1].value)
        assert again["redriven"] is True
        assert again["value_base64"] == orjson.loads(dead[0].value)["value_base64"]
        # ... which a redrive does not send again by itself: no loop.
        report = asyncio.run(redrive(settings, Selection(), dry_run=False))
        assert report.sent == 1  # the first dead letter only
        assert report.skipped == {"redriven before (use --include-redriven)": 1}
        dead = _dead_letters(ns, 3)
        assert len(dead) == 3

        # Fixed (the broken state removed): the next redrive applies it.
        async def fix() -> None:
            store = _store(ns)
            try:
                await store.client.delete(store.state_key(_partition("cust-r"), "c:cust-r"))
            finally:
                await store.client.aclose()

        asyncio.run(fix())
        out = subprocess.run(
            [sys.executable, "-m", "service", "redrive", "--reason", "processing_error",
             "--partition", str(dead[0].partition), "--to-offset", str(dead[0].offset)],
            env=ns.env(), capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "redrive: sent 1 of 1 dead letters read"
        wait_until(lambda: published(ns, 2), what="the redriven event applied and published")
        assert set(_views(ns, ["r1", "ok1"])) == {"r1", "ok1"}
        assert len(_dead_letters(ns, 4)) == 3  # nothing dead-lettered again
        assert worker.metric("cx_events_applied_total", topic=ns.topic("call-ended")) == 2
    finally:
        assert worker.stop() == 0, worker.logs()


def test_redriven_records_carry_the_header(stack: Stack) -> None:
    """What redrive publishes: the original key and bytes, with the header naming the dead
    letter."""
    ns = stack.namespace()
    _create_topics(ns)
    dead = {"topic": ns.topic("transfer"), "partition": 0, "offset": 7, "timestamp_ms": None,
            "key": "k", "key_base64": "aw==", "value_base64": "e30=", "reason": "not_json",
            "message": "m", "event_id": None, "dead_lettered_at": "2026-11-30T12:00:00.000Z"}
    asyncio.run(produce(stack.kafka_bootstrap,
                        [(ns.topic("dead-letter"), b"k", orjson.dumps(dead))]))
    progress = io.StringIO()
    report = asyncio.run(redrive(load_settings(ns.settings_env()), Selection(),
                                 dry_run=False, progress=progress, progress_every=0))
    assert report.sent == 1
    (record,) = asyncio.run(read_topic(stack.kafka_bootstrap, ns.topic("transfer"), 1))
    assert (record.key, record.value) == (b"k", b"{}")
    assert [h[0] for h in record.headers] == [REDRIVE_HEADER]
    assert record.headers[0][1].decode().startswith(f"{ns.topic('dead-letter')}:")
