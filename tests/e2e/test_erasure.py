"""`cx-stream erase` on the real stack: an erased customer is nowhere, and stays nowhere.

A worker applies a customer with contacts, a transfer, a survey, an at-risk alert and a
contact whose repeat window is still open, among other customers (one in the same partition).
The customer is erased while the worker runs (holding their state in memory); one more event
of theirs is sent; then `cx-stream rebuild` replays every topic into a new policy version and
the readers switch to it. The customer is nowhere: the API answers 404, no Redis key names
them or their contacts, their contacts have tombstones on the compacted topic, and their
events were dropped and counted, not applied. Every other customer is unchanged.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from service.adapters.kafka_admin import ensure_topics
from service.adapters.redis_state import RedisState, connect
from service.config import load_settings
from tests.support.stack import (
    ROOT,
    Namespace,
    Stack,
    Worker,
    produce,
    read_topic,
    wait_until,
)

pytestmark = pytest.mark.e2e
PARTITIONS = 6
KEY = "test-erasure-key-0123456789"
VICTIM = "cust-erase"
DAY = "2026-05-04"


def _partition(customer: str) -> int:
    every = list(range(PARTITIONS))
    return int(DefaultPartitioner()(customer.encode(), every, every))


def _others() -> list[str]:
    """Three other customers, the first in the victim's partition, the others not."""
    same = next(c for i in range(1000) if _partition(c := f"keep-{i}") == _partition(VICTIM))
    apart = [c for i in range(1000) if _partition(c := f"other-{i}") != _partition(VICTIM)][:2]
    return [same, *apart]


def _call(contact: str, customer: str, hour: int, minute: int = 0, **extra: Any) -> dict[str, Any]:
    time = f"{DAY}T{hour:02d}:{minute:02d}:00Z"
    return {"event_id": f"{contact}-ended", "occurred_at": time, "contact_id": contact,
            "customer_id": customer, "started_at": time, "channel": "voice",
            "queue": "billing", "outcome": "handled", "agent_id": "a1", **extra}


def _records(ns: Namespace, events: list[tuple[str, dict[str, Any]]]
             ) -> list[tuple[str, bytes | None, bytes | None]]:
    return [(ns.topic(kind), e["customer_id"].encode(), orjson.dumps(e)) for kind, e in events]


def _victim_events() -> list[tuple[str, dict[str, Any]]]:
    """Three calls an hour apart (repeats: the last one's window stays open), a transfer,
    and a bad survey: the customer goes at risk."""
    events = [("call-ended", _call(f"vc{i}", VICTIM, 10 + i)) for i in range(3)]
    events.append(("transfer", {"event_id": "vc1-transfer", "occurred_at": f"{DAY}T11:05:00Z",
                                "contact_id": "vc1", "customer_id": VICTIM,
                                "from_queue": "billing", "to_queue": "tech"}))
    events.append(("survey-answered", {"event_id": "vc0-survey",
                                       "occurred_at": f"{DAY}T10:30:00Z", "contact_id": "vc0",
                                       "customer_id": VICTIM, "source": "sms", "csat": 1,
                                       "resolved": False}))
    return events


def _other_events(others: list[str], hour: int) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    for n, customer in enumerate(others):
        events.append(("call-ended", _call(f"{customer}-c{hour}", customer, hour, 10 + n)))
        events.append(("survey-answered", {
            "event_id": f"{customer}-s{hour}", "occurred_at": f"{DAY}T{hour:02d}:{40 + n}:00Z",
            "contact_id": f"{customer}-c{hour}", "customer_id": customer, "source": "sms",
            "csat": 5, "resolved": True}))
    return events


def _redis(ns: Namespace, job: Any) -> Any:
    async def run() -> Any:
        client = connect(ns.stack.redis_url)
        try:
            return await job(client)
        finally:
            await client.aclose()

    return asyncio.run(run())


def _keys(ns: Namespace) -> list[str]:
    async def job(client: Any) -> list[str]:
        return [k.decode() async for k in client.scan_iter(match=f"{ns.name}:*", count=1000)]

    return list(_redis(ns, job))


def _traces(ns: Namespace, contacts: list[str]) -> list[str]:
    """Every Redis key of the namespace whose name or value holds the victim's id or one of
    their contact ids (hour counters hold neither)."""
    needles = [VICTIM.encode(), *(f'"{c}"'.encode() for c in contacts),
               *(f":{c}".encode() for c in contacts)]

    async def job(client: Any) -> list[str]:
        found = []
        async for raw in client.scan_iter(match=f"{ns.name}:*", count=1000):
            key = raw.decode()
            kind = (await client.type(raw)).decode()
            if kind == "string":
                values = [await client.get(raw) or b""]
            elif kind == "hash":
                values = list((await client.hgetall(raw)).values())
            elif kind == "zset":
                values = list(await client.zrange(raw, 0, -1))
            elif kind == "list":
                values = list(await client.lrange(raw, 0, -1))
            elif kind == "set":
                values = list(await client.smembers(raw))
            else:
                values = []
            text = raw + b"\n" + b"\n".join(values)
            if any(n in text for n in needles):
                found.append(key)
        return found

    return list(_redis(ns, job))


def _clocks(ns: Namespace, prefix: str) -> dict[int, Any]:
    async def job(client: Any) -> dict[int, Any]:
        store = RedisState(client, prefix, state_ttl=60, counter_ttl=60, contact_ttl=60)
        return await store.read_clocks(PARTITIONS)

    return dict(_redis(ns, job))


def _applied(ns: Namespace, prefix: str) -> int:
    return sum(sum(c.applied.values()) for c in _clocks(ns, prefix).values())


def _customer(worker: Worker, customer: str) -> dict[str, Any]:
    status, body = worker.get(f"/api/v1/customers/{customer}")
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    answer.pop("policy_version", None)
    for contact in answer["recent_contacts"]:
        contact.pop("version")
    return answer


def _command(ns: Namespace, *args: str, **env: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "service", *args], env=ns.env(**env),
                          capture_output=True, text=True, cwd=ROOT, timeout=180)
    return done.returncode, done.stdout + done.stderr


def test_erased_customer_is_nowhere_even_after_a_rebuild(stack: Stack, tmp_path: Path) -> None:
    ns = stack.namespace()
    asyncio.run(ensure_topics(load_settings(ns.settings_env())))
    others = _others()
    first = _victim_events() + _other_events(others, 9)
    asyncio.run(produce(stack.kafka_bootstrap, _records(ns, first)))
    worker = Worker(ns, tmp_path / "worker.log", CX_ERASURE_KEY=KEY)
    try:
        worker.wait_ready()
        wait_until(lambda: _applied(ns, ns.name) == len(first), timeout=90,
                   what="the first events applied")
        wait_until(lambda: worker.get("/api/v1/contacts/vc2")[0] == 200, timeout=30,
                   what="the victim's last contact served")
        victim = _customer(worker, VICTIM)
        assert victim["open_contacts"] == 1  # v2's repeat window is open: a timer waits
        assert [c["contact_id"] for c in victim["recent_contacts"]] == ["vc2", "vc1", "vc0"]
        alerts = asyncio.run(read_topic(stack.kafka_bootstrap, ns.topic("customer-alerts"), 1))
        assert [orjson.loads(a.value)["alert"] for a in alerts] == ["at_risk_entered"]
        assert sum(c.at_risk for c in _clocks(ns, ns.name).values()) == 1
        contacts = ["vc0", "vc1", "vc2"]
        assert _traces(ns, contacts)  # the check below can fail
        kept = {c: _customer(worker, c) for c in others}
        fcr_query = f"/api/v1/fcr?from={DAY}T00:00:00Z&to={DAY}T23:00:00Z"
        fcr_before = json.loads(worker.get(fcr_query)[1])
        assert fcr_before["total"] == len(others) + 3

        # A contact of theirs so old that only the compacted topic still has it.
        old = {"contact_id": "vc-old", "customer_id": VICTIM, "version": 1}
        asyncio.run(produce(stack.kafka_bootstrap, [
            (ns.topic("contact-enriched"), b"vc-old", orjson.dumps(old))]))

        # Erase while the worker runs and holds the victim's state in memory.
        code, out = _command(ns, "erase", VICTIM, "--by", "ticket-4711", CX_ERASURE_KEY=KEY)
        assert code == 0, out
        assert "erased 1 customer (1 newly, 0 already on the suppression list)" in out, out
        assert "deleted 1 customer states" in out, out
        assert "3 contact views" in out, out
        assert "published 4 tombstones" in out, out
        assert worker.get(f"/api/v1/customers/{VICTIM}")[0] == 404
        for contact in contacts:
            assert worker.get(f"/api/v1/contacts/{contact}")[0] == 404
        assert sum(c.at_risk for c in _clocks(ns, ns.name).values()) == 0
        # Aggregates are kept: the hour counters hold no customer ids.
        assert json.loads(worker.get(fcr_query)[1])["total"] == fcr_before["total"]

        # One more event of the victim, then one of each other customer (later, so the
        # watermarks do not depend on the victim's events): the victim's is dropped.
        late = [("call-ended", _call("vc3", VICTIM, 13))]
        more = _other_events(others, 14)
        asyncio.run(produce(stack.kafka_bootstrap, _records(ns, late + more)))
        wait_until(lambda: worker.metric("cx_events_suppressed_total",
                                         topic=ns.topic("call-ended")) == 1, timeout=60,
                   what="the victim's new event dropped and counted")
        wait_until(lambda: _applied(ns, ns.name) == len(first) + len(more), timeout=60,
                   what="the other customers' new events applied")
        wait_until(lambda: all(_customer(worker, c)["recent_contacts"][0]["contact_id"]
                               == f"{c}-c14" for c in others), timeout=30,
                   what="the other customers' new contacts served")
        assert worker.get(f"/api/v1/customers/{VICTIM}")[0] == 404
        assert worker.get("/api/v1/contacts/vc3")[0] == 404
        # Tombstones are queued behind the outputs a worker had in hand: wait until a batch
        # of each swept partition published them, then nothing of the victim is left.
        wait_until(lambda: not _traces(ns, [*contacts, "vc3"]), timeout=60,
                   what="no key naming the victim or their contacts")
        kept_live = {c: _customer(worker, c) for c in others}

        # A rebuild replays every topic into version 2 and switches the readers to it.
        code, out = _command(ns, "rebuild", "--progress-every", "0", CX_ERASURE_KEY=KEY,
                             CX_POLICY_VERSION="2")
        assert code == 0, out
        assert "readers switched from version 1 to 2" in out, out
        assert "of erased customers (dropped) 6" in out, out
        wait_until(lambda: json.loads(worker.get(fcr_query)[1])["policy_version"] == "2",
                   timeout=30, what="the readers on version 2")
        assert worker.get(f"/api/v1/customers/{VICTIM}")[0] == 404
        for contact in [*contacts, "vc3"]:
            assert worker.get(f"/api/v1/contacts/{contact}")[0] == 404
        assert not _traces(ns, [*contacts, "vc3"])
        assert _applied(ns, f"{ns.name}:v2") == len(first) + len(more) - 5
        for customer in others:
            assert _customer(worker, customer) == kept_live[customer]
            assert _customer(worker, customer) != kept[customer]  # the later contact is there

        # Erasing again changes nothing and says so; every run is in the audit trail.
        code, out = _command(ns, "erase", VICTIM, "--by", "ticket-4712", CX_ERASURE_KEY=KEY)
        assert code == 0, out
        assert "(0 newly, 1 already on the suppression list)" in out, out
        assert "nothing of them was left to delete" in out, out
        # A worker without the key refuses to start: it would apply the victim's events.
        refused = Worker(ns, tmp_path / "nokey.log")
        assert refused.proc.wait(60) == 2
        refused.stop()
        assert "CX_ERASURE_KEY" in refused.logs()
        assert worker.metric("cx_events_suppressed_total", topic=ns.topic("call-ended")) == 1
    finally:
        assert worker.stop() == 0, worker.logs()

    async def audit(client: Any) -> list[Any]:
        return list(await client.lrange(f"{ns.name}:{{erased}}:audit", 0, -1))

    lines = [orjson.loads(x) for x in _redis(ns, audit)]
    assert [(x["by"], x["customers"], x["newly_erased"]) for x in lines] == [
        ("ticket-4711", 1, 1), ("ticket-4712", 1, 0)]
    assert lines[0]["keys_deleted"] == 4  # the state and three contact views
    assert lines[1]["keys_deleted"] == 0

    # The compacted topic ends each of the victim's contacts with a tombstone.
    enriched = asyncio.run(read_topic(stack.kafka_bootstrap, ns.topic("contact-enriched"),
                                      10_000, timeout=10))
    last: dict[str, bytes | None] = {}
    for record in enriched:
        last[record.key.decode()] = record.value
    for contact in [*contacts, "vc-old"]:
        assert contact in last
        assert last[contact] is None, contact
    assert all(last[f"{c}-c14"] is not None for c in others)
    alerts = asyncio.run(read_topic(stack.kafka_bootstrap, ns.topic("customer-alerts"), 3,
                                    timeout=30))
    erased = [orjson.loads(a.value) for a in alerts
              if orjson.loads(a.value)["alert"] == "customer_erased"]
    assert [(e["customer_id"], sorted(e)) for e in erased] == [
        (VICTIM, ["alert", "at", "customer_id"])] * 2
    assert all(a.key == VICTIM.encode() for a in alerts)
