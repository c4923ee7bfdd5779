"""The engine on the real stack: arrival patterns, a real month of calls, the API."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import murmur2
from jsonschema import Draft202012Validator

from service.adapters.kafka_admin import ensure_topics
from service.adapters.redis_state import connect
from service.config import load_settings
from service.tools.anonymous_bank import ImportReport, convert, parse_utc_offset
from service.tools.traffic import TrafficModel
from tests.support.engine_state import PARTITIONS, snapshot, wait_settled
from tests.support.stack import Namespace, Stack, Worker, produce, read_topic, wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
BANK = ROOT.parent / "shared/data/anonymous-bank/1999-08.tsv"


def _create_topics(ns: Namespace, **env: str) -> None:
    asyncio.run(ensure_topics(load_settings({**ns.settings_env(), **env})))


def _wait_consumed(worker: Worker, sent: int) -> None:
    def consumed() -> float:
        return sum(value for (name, _), value in worker.metrics().items()
                   if name == "cx_events_consumed_total")

    wait_until(lambda: consumed() >= sent, timeout=60, what=f"{sent} trickled events consumed")


def _traffic() -> list[Any]:
    start = datetime.fromisoformat("2026-09-07T00:00:00+00:00").timestamp()
    model = TrafficModel(start=start, contacts_per_second=0.02, customers=150, seed=21,
                         duplicate_share=0.02, malformed_share=0.0)
    return model.advance(start + 2.5 * 86400)


SHORT_WINDOWS = {"CX_REPEAT_WINDOW": "2h", "CX_ALLOWED_LATENESS": "6h"}


def test_preloaded_and_trickled_give_identical_verdicts_and_counters(
    stack: Stack, tmp_path: Path
) -> None:
    messages = _traffic()
    distinct = len({m.value for m in messages})
    assert distinct > 3000

    preloaded = stack.namespace()
    _create_topics(preloaded)
    asyncio.run(produce(stack.kafka_bootstrap,
                        [(preloaded.topic(m.kind), m.key, m.value) for m in messages]))
    worker = Worker(preloaded, tmp_path / "preloaded.log", **SHORT_WINDOWS)
    try:
        worker.wait_ready()
        wait_settled(preloaded, distinct, what="the backlog applied")
        assert worker.metric("cx_events_invalid_total", topic=preloaded.topic("survey-answered"),
                             reason="too_late") == 0
    finally:
        assert worker.stop() == 0, worker.logs()

    trickled = stack.namespace()
    _create_topics(trickled)
    worker = Worker(trickled, tmp_path / "trickled.log", **SHORT_WINDOWS)
    try:
        worker.wait_ready()
        records = [(trickled.topic(m.kind), m.key, m.value) for m in messages]
        chunk = len(records) // 25 + 1
        for i in range(0, len(records), chunk):
            # Each chunk is consumed before the next one is sent: 25 batches or more, whatever
            # the machine's speed.
            asyncio.run(produce(stack.kafka_bootstrap, records[i:i + chunk]))
            _wait_consumed(worker, min(i + chunk, len(records)))
        wait_settled(trickled, distinct, what="the trickle applied")
    finally:
        assert worker.stop() == 0, worker.logs()

    views_a, counters_a, _ = snapshot(preloaded)
    views_b, counters_b, _ = snapshot(trickled)
    assert len(views_a) > 1000
    assert views_a.keys() == views_b.keys()
    differing = {cid: {k: (v, views_b[cid].get(k)) for k, v in view.items()
                       if views_b[cid].get(k) != v}
                 for cid, view in views_a.items() if view != views_b[cid]}
    assert differing == {}
    assert counters_a == counters_b
    resolutions = Counter(v["resolution"] for v in views_a.values())
    assert resolutions["resolved"] > 100
    assert resolutions["unresolved"] > 100  # repeats, transfers, unhappy surveys all occur


def _bank_events() -> list[dict[str, Any]]:
    assert BANK.exists(), f"the Anonymous Bank month is expected at {BANK} (shared/ beside)"
    report = ImportReport()
    with open(BANK, encoding="utf-8") as f:
        return list(convert(f.readlines(), parse_utc_offset("+03:00"), report))


def _partition(key: str) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


def independent_fcr(events: list[dict[str, Any]], window: float) -> dict[str, int]:
    """FCR of the month, computed here from the imported file, without service.domain."""
    def t(e: dict[str, Any]) -> float:
        return datetime.fromisoformat(e["occurred_at"]).timestamp()

    # Each input partition closes windows at its own watermark: the newest event time in it.
    watermark: dict[int, float] = {}
    for e in events:
        p = _partition(e["customer_id"] or e["contact_id"])
        watermark[p] = max(watermark.get(p, 0.0), t(e))
    calls: dict[str, list[tuple[float, str]]] = {}
    for e in events:
        if e["outcome"] == "handled" and e["customer_id"] is not None:
            calls.setdefault(e["customer_id"], []).append((t(e), e["contact_id"]))
    total = unresolved = resolved = repeats = 0
    for customer, contacts in calls.items():
        contacts.sort()
        wm = watermark[_partition(customer)]
        for i, (when, _) in enumerate(contacts):
            total += 1
            if i > 0 and when - contacts[i - 1][0] <= window:
                repeats += 1
            if i + 1 < len(contacts) and contacts[i + 1][0] - when <= window:
                unresolved += 1
            elif wm > when + window:
                resolved += 1
    return {"total": total, "unresolved": unresolved, "resolved": resolved,
            "repeats": repeats}


@pytest.mark.parametrize(("window", "seconds"), [("24h", 86400.0), ("7d", 7 * 86400.0)])
def test_anonymous_bank_month_replayed_matches_an_independent_computation(
    stack: Stack, tmp_path: Path, window: str, seconds: float
) -> None:
    events = _bank_events()
    assert len(events) == 41_768
    ns = stack.namespace()
    _create_topics(ns)
    started = time.monotonic()
    asyncio.run(produce(stack.kafka_bootstrap, [
        (ns.topic("call-ended"), (e["customer_id"] or e["contact_id"]).encode(),
         orjson.dumps(e)) for e in events]))
    worker = Worker(ns, tmp_path / "bank.log", CX_REPEAT_WINDOW=window,
                    CX_BATCH_MAX_EVENTS="1000")
    try:
        worker.wait_ready()
        wait_settled(ns, len(events), what="the month applied", worker=worker)
        elapsed = time.monotonic() - started
        status, body = worker.get(
            "/api/v1/fcr?from=1999-07-31T21:00:00Z&to=1999-09-01T00:00:00Z")
        assert status == 200, body
        got = json.loads(body)
        repeats = _counter_total(ns, "all|repeats")
        customers = _every_customer(worker, events)
    finally:
        assert worker.stop() == 0, worker.logs()
    # Every identified customer of the month is known at its end, idle or not, and their
    # history counts what the file says (the 90 days cover the month).
    assert {status for status, _ in customers.values()} == {200}
    expected_history = independent_history(events, seconds)
    assert {c: (a["history"]["contacts"], a["history"]["unresolved"],
                datetime.fromisoformat(a["history"]["last_contact_at"]).timestamp())
            for c, (_, a) in customers.items()} == expected_history
    details = Counter(a["detail"] for _, a in customers.values())
    if seconds == 86400.0:  # records go 4 to 6 days after a customer's last contact
        assert details["summary"] > 1000
    expected = independent_fcr(events, seconds)
    assert {k: got[k] for k in ("total", "unresolved", "resolved")} == {
        k: expected[k] for k in ("total", "unresolved", "resolved")}
    assert repeats == expected["repeats"]
    assert got["pending"] == expected["total"] - expected["unresolved"] - expected["resolved"]
    assert got["final"] is False  # the last window of the month is still open
    print(f"\nAnonymous Bank 1999-08, W={window}: {len(customers)} identified customers "
          f"answered 200 ({details['summary']} from their history only)")
    print(f"Anonymous Bank 1999-08, W={window}: {len(events)} events replayed in "
          f"{elapsed:.1f}s; handled identified {got['total']}, repeats {repeats}, "
          f"unresolved {got['unresolved']}, resolved {got['resolved']}, pending "
          f"{got['pending']}, provisional FCR {got['fcr']:.4f}, FCR of closed "
          f"{got['resolved'] / (got['resolved'] + got['unresolved']):.4f}")


def independent_history(events: list[dict[str, Any]], window: float
                        ) -> dict[str, tuple[int, int, float]]:
    """Per identified customer: contacts, unresolved handled contacts (a later handled one
    within the window), and the latest contact time, from the file without service.domain."""
    by_customer: dict[str, list[tuple[float, str]]] = {}
    for e in events:
        if e["customer_id"] is not None:
            by_customer.setdefault(e["customer_id"], []).append(
                (datetime.fromisoformat(e["occurred_at"]).timestamp(), e["outcome"]))
    out = {}
    for customer, contacts in by_customer.items():
        handled = sorted(t for t, outcome in contacts if outcome == "handled")
        unresolved = sum(1 for a, b in pairwise(handled) if b - a <= window)
        out[customer] = (len(contacts), unresolved, max(t for t, _ in contacts))
    return out


def _every_customer(worker: Worker, events: list[dict[str, Any]]
                    ) -> dict[str, tuple[int, dict[str, Any]]]:
    """The lookup of every identified customer of the events: status and answer."""
    names = sorted({e["customer_id"] for e in events if e["customer_id"] is not None})

    def look(name: str) -> tuple[int, dict[str, Any]]:
        status, body = worker.get(f"/api/v1/customers/{name}")
        return status, json.loads(body)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(names, pool.map(look, names), strict=True))


def _counter_total(ns: Namespace, name: str) -> int:
    async def read() -> int:
        client = connect(ns.stack.redis_url)
        try:
            total = 0
            async for key in client.scan_iter(match=f"{ns.name}:{{p*}}:h:*", count=1000):
                total += int(await client.hget(key, name) or 0)
            return total
        finally:
            await client.aclose()

    return asyncio.run(read())


def test_api_and_enriched_topic(stack: Stack, tmp_path: Path) -> None:
    ns = stack.namespace()
    _create_topics(ns)
    calls = [
        {"event_id": f"e{i}", "occurred_at": f"2026-05-04T1{i}:00:00Z", "contact_id": f"c{i}",
         "customer_id": "cust-api", "started_at": f"2026-05-04T1{i}:00:00Z",
         "channel": "voice", "queue": "billing", "outcome": "handled", "agent_id": "a1",
         "crm_case": "X-1"}
        for i in range(3)
    ]
    calls[1].update({"complaint": True, "sentiment": -0.5, "topics": ["invoice"]})  # analytics
    survey = {"event_id": "s0", "occurred_at": "2026-05-04T10:30:00Z", "contact_id": "c0",
              "customer_id": "cust-api", "source": "sms", "csat": 1, "ces": 6,
              "resolved": False}
    records = [(ns.topic("call-ended"), b"cust-api", orjson.dumps(c)) for c in calls]
    asyncio.run(produce(stack.kafka_bootstrap, records))
    worker = Worker(ns, tmp_path / "api.log")
    try:
        worker.wait_ready()
        wait_until(lambda: worker.get("/api/v1/contacts/c2")[0] == 200, timeout=60,
                   what="contact c2 served")
        # The survey arrives later: c0 gets a new version with the survey's verdict.
        asyncio.run(produce(stack.kafka_bootstrap, [
            (ns.topic("survey-answered"), b"cust-api", orjson.dumps(survey))]))
        wait_until(lambda: json.loads(worker.get("/api/v1/contacts/c0")[1])["csat"] == 1,
                   timeout=60, what="the survey joined")
        status, body = worker.get("/api/v1/contacts/c0")
        c0 = json.loads(body)
        assert status == 200
        assert c0["resolution"] == "unresolved"
        assert c0["resolution_reasons"] == ["repeat_contact", "survey_unresolved"]
        assert c0["csat"] == 1
        assert c0["crm_case"] == "X-1"  # unknown fields carried through
        c2 = json.loads(worker.get("/api/v1/contacts/c2")[1])
        assert (c2["is_repeat"], c2["repeat_of"], c2["resolution"]) == (True, "c1", "pending")

        status, body = worker.get("/api/v1/customers/cust-api")
        customer = json.loads(body)
        assert status == 200
        assert [c["contact_id"] for c in customer["recent_contacts"]] == ["c2", "c1", "c0"]
        assert customer["perception"]["score"] < 70  # a bad survey and two repeats
        assert customer["open_contacts"] == 1

        assert worker.get("/api/v1/contacts/nope")[0] == 404
        assert worker.get("/api/v1/customers/nobody")[0] == 404
        for query in ("", "?from=2026-05-04T10:00:00Z", "?from=x&to=y",
                      "?from=2026-05-04T10:30:00Z&to=2026-05-04T12:00:00Z",
                      "?from=2026-05-04T12:00:00Z&to=2026-05-04T10:00:00Z",
                      "?from=2026-05-04T10:00:00Z&to=2026-05-04T12:00:00Z&queue=a&agent=b",
                      "?from=2026-05-04T10:00:00Z&to=2026-05-04T12:00:00Z&colour=red"):
            status, body = worker.get(f"/api/v1/fcr{query}")
            assert status == 400, query
            assert json.loads(body)["error"]
        fcr = json.loads(worker.get(
            "/api/v1/fcr?from=2026-05-04T10:00:00Z&to=2026-05-04T13:00:00Z&queue=billing")[1])
        assert {k: fcr[k] for k in ("total", "unresolved", "resolved", "pending", "final")} == {
            "total": 3, "unresolved": 2, "resolved": 0, "pending": 1, "final": False}
        assert fcr["fcr"] == pytest.approx(1 / 3, abs=1e-6)
        labels = {"window": "24h", "queue": "billing", "channel": "", "segment": "",
                  "agent": "", "policy_version": "1"}
        wait_until(lambda: worker.metric("cx_csat_average", **labels) == 1, timeout=60,
                   what="the business gauges refreshed after the survey")
        assert worker.metric("cx_customers_at_risk", policy_version="1") == 1
        assert worker.metric("cx_data_quality_ratio", measure="identified_contacts",
                             window="24h", policy_version="1") == 1.0
        assert worker.metric("cx_data_quality_ratio", measure="surveys_joined",
                             window="", policy_version="1") == 1.0
        bands = {f"{b * 10}-{b * 10 + 10}": worker.metric("cx_perception_customers",
                                                            band=f"{b * 10}-{b * 10 + 10}",
                                                            policy_version="1")
                 for b in range(10)}
        assert sum(bands.values()) == 1
        assert sum(n for band, n in bands.items() if int(band.split("-")[0]) < 40) == 1
        assert worker.metric("cx_fcr_provisional_ratio", **labels) == pytest.approx(1 / 3)
        assert worker.metric("cx_repeat_contact_ratio", **labels) == pytest.approx(2 / 3)
        assert worker.metric("cx_window_contacts", **{**labels, "queue": ""}) == 3
        assert worker.metric("cx_csat_average", **labels) == 1
        assert worker.metric("cx_watermark_timestamp_seconds") == pytest.approx(
            datetime.fromisoformat("2026-05-04T12:00:00+00:00").timestamp())
        assert ("cx_fcr_final_ratio", frozenset({**labels}.items())) not in worker.metrics()
        assert worker.metric("cx_contacts_total", queue="billing", channel="voice",
                             outcome="handled") == 3
        assert worker.metric("cx_repeat_contacts_total", queue="billing", channel="voice") == 2
        assert worker.metric("cx_surveys_total", source="sms") == 1
        assert worker.metric("cx_contact_corrections_total") >= 1  # c0 got the survey
        assert worker.metric("cx_event_latency_seconds_count") == 4
        # Survey truth: c0's survey said not resolved, and c1 repeated it.
        assert worker.metric("cx_ces_average", **labels) == 6
        status, body = worker.get(
            "/api/v1/surveys?from=2026-05-04T10:00:00Z&to=2026-05-04T13:00:00Z&queue=billing")
        assert status == 200, body
        truth = json.loads(body)
        assert (truth["ces"], truth["ces_answers"]) == (6.0, 1)
        assert truth["survey_gap"] == {
            "said_resolved": 0, "said_resolved_repeated": 0, "said_unresolved": 1,
            "said_unresolved_not_repeated": 0, "said_resolved_repeated_share": None,
            "said_unresolved_not_repeated_share": 0.0}
        assert truth["by_resolution"]["unresolved"] == {
            "csat": 1.0, "nps": None, "csat_answers": 1, "nps_answers": 0}
        assert truth["final"] is False
        assert truth["speech_analytics"] == {
            "complaint_rate": 1.0, "complaints": 1, "analysed_for_complaints": 1,
            "sentiment": -0.5, "sentiment_answers": 1}
        assert worker.metric("cx_complaint_ratio", **labels) == 1.0
        assert worker.metric("cx_sentiment_average", **labels) == -0.5
        c1 = json.loads(worker.get("/api/v1/contacts/c1")[1])
        assert (c1["complaint"], c1["sentiment"], c1["topics"]) == (True, -0.5, ["invoice"])
        assert worker.get("/api/v1/surveys?from=2026-05-04T10:00:00Z")[0] == 400
        # At risk: the work list holds the customer, worth 0 (no value, no segment defaults).
        risk = json.loads(worker.get("/api/v1/customers/at-risk")[1])
        assert [(c["customer_id"], c["value"], c["segment"]) for c in risk["customers"]] == [
            ("cust-api", 0.0, "none")]
        assert [c["contact_id"] for c in risk["customers"][0]["last_contacts"]] == [
            "c2", "c1", "c0"]
        other = json.loads(worker.get(
            "/api/v1/fcr?from=2026-05-04T10:00:00Z&to=2026-05-04T13:00:00Z&queue=sales")[1])
        assert other["total"] == 0
        assert other["fcr"] is None
    finally:
        assert worker.stop() == 0, worker.logs()

    # The compacted topic's latest version per contact is what the API serves.
    enriched = asyncio.run(read_topic(stack.kafka_bootstrap, ns.topic("contact-enriched"), 5))
    latest: dict[str, dict[str, Any]] = {}
    for rec in enriched:
        view = orjson.loads(rec.value)
        assert rec.key.decode() == view["contact_id"]
        if view["version"] > latest.get(view["contact_id"], {"version": 0})["version"]:
            latest[view["contact_id"]] = view
    assert latest["c0"] == c0
    schema = json.loads((ROOT / "schemas/contact-enriched.schema.json").read_text())
    validator = Draft202012Validator(schema)
    for view in latest.values():
        assert list(validator.iter_errors(view)) == []
    alerts = asyncio.run(read_topic(stack.kafka_bootstrap, ns.topic("customer-alerts"), 1))
    assert [orjson.loads(a.value)["alert"] for a in alerts] == ["at_risk_entered"]
    alert_schema = json.loads((ROOT / "schemas/customer-alerts.schema.json").read_text())
    assert list(Draft202012Validator(alert_schema).iter_errors(orjson.loads(alerts[0].value))) == []
    assert latest["c0"]["version"] == 2  # first without the survey, then with it
