"""Customer value: the latest known value per customer, the value at risk and the at-risk
work list, table by table, and kept by the partition step exactly as an independent
computation from the published alerts and the events says."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime
from typing import Any

import orjson
import pytest

from service.adapters.http_value import at_risk_query, page_of
from service.adapters.metrics import PipelineMetrics
from service.config import ConfigError, load_settings
from service.domain.engine import alert_payload, apply_event, fold, new_state, settle
from service.domain.policy import PerceptionPolicy, Policy
from service.domain.records import CustomerState
from service.domain.value import NO_SEGMENT, cents, customer_value
from service.service_layer.ingest import IngestProcessor, IngestSettings, InputMessage
from service.service_layer.outbox import Topics
from service.service_layer.partition_step import StepRules
from tests.unit.builders import at, call, ts
from tests.unit.memory_store import MemorySink, MemoryStore

VALUES = {"gold": 900.0, "standard": 60.0, "*": 25.0}
POLICY = Policy(perception=PerceptionPolicy(segment_values=VALUES))


@pytest.mark.parametrize(("value", "expected"), [
    (0.0, 0), (1.0, 100), (129.99, 12999), (0.005, 0), (0.015, 2), (1e12, 10 ** 14)])
def test_cents(value: float, expected: int) -> None:
    assert cents(value) == expected


@pytest.mark.parametrize(("segments", "values", "expected"), [
    # (segment per contact, customer_value per contact): the latest value carried wins
    (["gold", "gold"], [None, None], 900.0),  # none carried: the segment's default
    (["bronze"], [None], 25.0),  # an unlisted segment: "*"
    ([None], [None], 25.0),
    (["gold", "gold"], [120.0, None], 120.0),  # a later contact without one keeps it
    (["gold", "gold"], [120.0, 80.0], 80.0),
    (["standard", "gold"], [None, 0.0], 0.0),  # zero is a value
])
def test_customer_value(segments: list[str | None], values: list[float | None],
                        expected: float) -> None:
    state = new_state(call("a", 0))
    for i, (segment, value) in enumerate(zip(segments, values, strict=True)):
        extra = {} if value is None else {"customer_value": value}
        apply_event(state, call(f"c{i}", i, segment=segment, **extra))
    assert customer_value(state, POLICY) == expected


def test_without_segment_values_a_customer_is_worth_zero() -> None:
    state = new_state(call("a", 0))
    apply_event(state, call("a", 0, segment="gold"))
    assert customer_value(state, Policy()) == 0.0


def test_the_latest_value_does_not_depend_on_arrival_order() -> None:
    events = [call(f"c{i}", h, customer_value=v)
              for i, (h, v) in enumerate([(5, 10.0), (1, 20.0), (5, 30.0), (3, 40.0)])]
    seen = set()
    for seed in range(20):
        order = events[:]
        random.Random(seed).shuffle(order)
        state = new_state(order[0])
        for e in order:
            apply_event(state, e)
        seen.add(customer_value(state, POLICY))
    assert seen == {30.0}  # hour 5, the greater contact_id (c2 > c0)


def test_a_correction_of_the_latest_contact_replaces_its_value() -> None:
    state = new_state(call("a", 0))
    apply_event(state, call("a", 1, customer_value=50.0))
    apply_event(state, call("a", 1.5, customer_value=70.0, event_id="a-corrected"))
    assert customer_value(state, POLICY) == 70.0
    assert state.value is not None
    again = CustomerState.from_dict(orjson.loads(orjson.dumps(state.to_dict())))
    assert again.value == state.value


def _abandons(state: CustomerState | None, hours: list[float], **extra: Any
              ) -> tuple[CustomerState, list[Any]]:
    """Abandoned calls at `hours`, each folded at its own time: the settles' outputs."""
    outs = []
    for h in hours:
        state, out, _ = fold(state, call(f"x{h}", h, outcome="abandoned", **extra), ts(h),
                             POLICY)
        outs.append(out)
    assert state is not None
    return state, outs


def test_entering_at_risk_counts_the_value_and_writes_the_entry() -> None:
    state, outs = _abandons(None, [0, 1, 2, 3], segment="gold", customer_value=300.0)
    entered = [(i, a) for i, o in enumerate(outs) for a in o.alerts]
    assert [a.alert for _, a in entered] == ["at_risk_entered"]
    i, alert = entered[0]
    assert alert.value == 300.0
    assert alert_payload(alert)["value"] == 300.0
    out = outs[i]
    assert out.risk_change == (None, ("gold", 30000))
    assert out.risk_entry is not None
    entry = out.risk_entry.to_json()
    assert entry["customer_id"] == "cust-1"
    assert (entry["segment"], entry["value"], entry["cause"]) == ("gold", 300.0, "abandoned")
    assert entry["since"] == at(i).replace("Z", ".000Z")
    assert [c["contact_id"] for c in entry["last_contacts"]] == [f"x{h}" for h in (
        i, i - 1, i - 2)]
    assert state.risk == ("gold", 30000)
    # A later settle that changes nothing writes nothing and counts nothing again.
    again = settle(state, ts(i), POLICY)
    assert again.risk_entry is None
    assert again.risk_change is None


def test_a_new_value_while_at_risk_moves_the_count_by_the_difference() -> None:
    state, _ = _abandons(None, [0, 1, 2], segment="gold")
    assert state.risk == ("gold", 90000)  # the segment's default
    state, outs = _abandons(state, [3], segment="gold", customer_value=10.5)
    assert outs[0].risk_change == (("gold", 90000), ("gold", 1050))
    assert outs[0].risk_entry is not None
    assert outs[0].risk_entry.value == 10.5


def test_leaving_at_risk_removes_the_entry_and_the_value() -> None:
    state, _ = _abandons(None, [0, 1, 2])
    assert state.risk == (NO_SEGMENT, 2500)
    out = settle(state, ts(24 * 40), POLICY)  # weeks later: recovered, or idle
    assert [a.alert for a in out.alerts] == ["at_risk_left"]
    assert out.risk_removed
    assert out.risk_change == ((NO_SEGMENT, 2500), None)
    assert state.risk is None


@pytest.mark.parametrize(("query", "expected"), [
    ([], (50, 0, "value", None)),
    ([("limit", "10"), ("offset", "20"), ("order", "since"), ("segment", "gold")],
     (10, 20, "since", "gold")),
    ([("order", "score")], (50, 0, "score", None)),
    ([("limit", "0")], "'limit' must be a whole number from 1 to 500, got '0'"),
    ([("limit", "501")], "'limit' must be a whole number from 1 to 500, got '501'"),
    ([("limit", "-1")], "'limit' must be a whole number from 1 to 500, got '-1'"),
    ([("offset", "10001")], "'offset' must be a whole number from 0 to 10000, got '10001'"),
    ([("order", "name")], "'order' must be one of value, score, since, got 'name'"),
    ([("segment", "")], "'segment' must be 1 to 128 characters, got 0"),
    ([("limit", "1"), ("limit", "2")], "parameter(s) given more than once: limit"),
    ([("sort", "value")], "unknown parameter(s): 'sort'"),
])
def test_at_risk_query(query: list[tuple[str, str]], expected: object) -> None:
    assert at_risk_query(query) == expected


def test_page_of_merges_partitions_by_score_then_customer_id() -> None:
    ranked = [(-500.0, "b", 1), (-900.0, "z", 0), (-500.0, "a", 2), (-100.0, "c", 0)]
    assert page_of(ranked, 0, 2) == [(-900.0, "z", 0), (-500.0, "a", 2)]
    assert page_of(ranked, 2, 5) == [(-500.0, "b", 1), (-100.0, "c", 0)]


def test_segment_values_setting() -> None:
    settings = load_settings({"CX_SEGMENT_VALUES": '{"gold": 900, "*": 12.5}'})
    assert settings.segment_values == {"gold": 900.0, "*": 12.5}
    for bad in ('{"gold": -1}', '{"gold": "x"}', "[1]", "{"):
        with pytest.raises(ConfigError, match="CX_SEGMENT_VALUES"):
            load_settings({"CX_SEGMENT_VALUES": bad})


# -- kept by the partition step, against an independent computation --------------------------

P = 0
TOPICS = Topics("dead-letter", "contact-enriched", "customer-alerts")
KINDS = {"call-ended": "call-ended"}


def _stream(seed: int) -> list[dict[str, Any]]:
    """Calls of 60 customers over three weeks: many abandons and long waits put some at risk,
    some recover; some contacts carry a value, some customers change segment."""
    rng = random.Random(seed)
    events = []
    for n in range(600):
        customer = f"cust-{rng.randrange(60)}"
        hours = rng.uniform(0, 24 * 21)
        outcome = rng.choice(["abandoned", "abandoned", "handled", "handled", "handled",
                              "self_service"])
        event: dict[str, Any] = {
            "event_id": f"e{n}", "occurred_at": at(hours), "contact_id": f"c{n}",
            "customer_id": customer, "started_at": at(hours - 0.1), "channel": "voice",
            "queue": rng.choice(["billing", "tech"]), "outcome": outcome,
            "agent_id": "agent-1" if outcome == "handled" else None,
            "segment": rng.choice(["gold", "standard", "bronze", None]),
            "wait_seconds": rng.choice([10.0, 10.0, 10.0, 400.0]),
        }
        if rng.random() < 0.08:
            event["customer_value"] = round(rng.uniform(0, 500), 2)
        events.append(event)
    events.sort(key=lambda e: e["occurred_at"])  # mostly in order, as a centre sends them
    for i in range(0, len(events) - 1, 7):  # with some arriving late
        events[i], events[i + 1] = events[i + 1], events[i]
    return events


def _independent(events: list[dict[str, Any]], alerts: list[dict[str, Any]]
                 ) -> dict[str, tuple[str, float]]:
    """The customers at risk by their latest alert, with their segment (of their latest
    contact) and value (the latest value carried, else their segment's default)."""
    latest: dict[str, dict[str, Any]] = {}
    for a in alerts:
        if a["customer_id"] not in latest or a["version"] > latest[a["customer_id"]]["version"]:
            latest[a["customer_id"]] = a
    out = {}
    for customer, alert in latest.items():
        if alert["alert"] != "at_risk_entered":
            continue
        mine = sorted((e for e in events if e["customer_id"] == customer),
                      key=lambda e: (ts_of(e), e["contact_id"], e["event_id"]))
        segment = mine[-1]["segment"]
        valued = [e for e in mine if e.get("customer_value") is not None]
        value = (valued[-1]["customer_value"] if valued else
                 VALUES.get(segment, VALUES["*"]) if segment is not None else VALUES["*"])
        out[customer] = (segment or NO_SEGMENT, value)
    return out


def ts_of(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["occurred_at"].replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_work_list_and_value_at_risk_match_an_independent_computation(seed: int) -> None:
    events = _stream(seed)
    store, sink = MemoryStore(), MemorySink()
    settings = IngestSettings(topics=TOPICS, rules=StepRules(
        policy=POLICY, topic_kinds=KINDS, input_topics=("call-ended",)),
        max_event_bytes=1 << 20, retry_max_backoff=0.01)
    processor = IngestProcessor(store=store, sink=sink, metrics=PipelineMetrics(list(KINDS)),
                                settings=settings)
    messages = [InputMessage("call-ended", P, i, e["customer_id"].encode(), orjson.dumps(e),
                             None) for i, e in enumerate(events)]

    async def go() -> None:
        for i in range(0, len(messages), 25):
            await processor.process(messages[i:i + 25])
    asyncio.run(go())

    alerts = [orjson.loads(v) for _, _, v in sink.on(TOPICS.customer_alerts) if v]
    expected = _independent(events, alerts)
    assert len(expected) >= 3, "the stream puts customers at risk"
    part = store.partition(P)
    entries = {cid: orjson.loads(raw) for cid, raw in part.risk.items()}
    assert {cid: (e["segment"], e["value"]) for cid, e in entries.items()} == expected
    # Every alert carries the value the customer had when it was sent; the last ones agree.
    for a in alerts:
        if a["customer_id"] in expected and a["alert"] == "at_risk_entered":
            assert a["value"] >= 0
    per_segment: dict[str, int] = {}
    for segment, value in expected.values():
        per_segment[segment] = per_segment.get(segment, 0) + cents(value)
    clock = store.clock(P)
    assert {s: n for s, n in clock.value_at_risk.items() if n} == per_segment
    assert {s: n for s, n in clock.at_risk_by_segment.items() if n} == {
        s: sum(1 for seg, _ in expected.values() if seg == s) for s in per_segment}
    assert clock.at_risk == len(expected)
    # The orders' scores: value highest first, then score, then since.
    for cid, e in entries.items():
        value_score, score, _ = part.risk_scores[cid]
        assert value_score == -cents(e["value"])
        assert score == e["score"]
