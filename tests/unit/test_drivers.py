"""Repeat drivers, table by table: what an unresolved contact led to, the counter dimensions
it is counted under, the caps, and the Pareto."""

from __future__ import annotations

from collections import Counter

import pytest

from service.adapters.http_drivers import drivers_query
from service.domain.cardinality import OTHER, LabelCaps
from service.domain.costs import ContactCosts
from service.domain.counters import (
    STATUS_RESOLVED,
    STATUS_UNRESOLVED,
    Counted,
    add_change,
    driver_name,
    driver_value,
    expand,
)
from service.domain.drivers import DriverCounts, driver_kind, pareto
from service.domain.engine import apply_event, new_state, settle
from service.domain.policy import Policy, QueuePolicy
from tests.unit.builders import call, survey, transfer, ts

POLICY = Policy()
NO_TRANSFER_RULE = Policy(default=QueuePolicy(transfer_breaks_fcr=False))


def counted_after(events: list, hours: float, policy: Policy = POLICY,
                  caps: LabelCaps | None = None) -> dict[str, Counted]:
    """Each contact's Counted as last published, after folding `events` and settling."""
    state = new_state(events[0])
    for event in events:
        apply_event(state, event)
    settle(state, ts(hours), policy, caps)
    return {cid: Counted.from_tuple(e.counted) for cid, e in state.emitted.items()}


@pytest.mark.parametrize(("events", "led", "led_reason"), [
    # repeated by a later contact: its queue and reason (no reason: `unknown`)
    ([call("a", 0, reason="card"), call("b", 5, queue="tech", reason="loan")], "tech", "loan"),
    ([call("a", 0, reason="card"), call("b", 5, queue="tech")], "tech", "unknown"),
    # the nearest repeat counts, not a later one
    ([call("a", 0), call("b", 5, queue="tech"), call("c", 9, queue="sales")], "tech",
     "unknown"),
    # no repeat: the transfer, else the survey's "not resolved"
    ([call("a", 0), transfer("a", 0.5)], "transfer", None),
    ([call("a", 0), survey("a", 2, resolved=False)], "survey_unresolved", None),
    # a repeat wins over a transfer
    ([call("a", 0), transfer("a", 0.5), call("b", 5, queue="tech")], "tech", "unknown"),
])
def test_what_an_unresolved_contact_led_to(events: list, led: str,
                                           led_reason: str | None) -> None:
    a = counted_after(events, 10)["a"]
    assert a.status == STATUS_UNRESOLVED
    assert (a.led_queue, a.led_reason) == (led, led_reason)


def test_resolved_and_pending_contacts_led_to_nothing() -> None:
    found = counted_after([call("a", 0, reason="card")], 24 * 8)
    assert found["a"].status == STATUS_RESOLVED
    assert (found["a"].led_queue, found["a"].reason) == (None, "card")
    assert counted_after([call("b", 0)], 1)["b"].led_queue is None  # pending
    # A transfer that does not break FCR leaves the contact resolved, leading nowhere.
    found = counted_after([call("a", 0), transfer("a", 0.5)], 24 * 8, NO_TRANSFER_RULE)
    assert (found["a"].status, found["a"].led_queue) == (STATUS_RESOLVED, None)


def test_a_corrected_repeat_moves_the_origin_s_flow() -> None:
    state = new_state(call("a", 0))
    for event in (call("a", 0), call("b", 5, queue="tech")):
        apply_event(state, event)
    settle(state, ts(6), POLICY)
    apply_event(state, call("b", 5, queue="sales", event_id="b-later-id"))
    out = settle(state, ts(7), POLICY)
    assert Counted.from_tuple(state.emitted["a"].counted).led_queue == "sales"
    delta = out.counter_deltas[int(ts(0) // 3600) * 3600]
    assert delta["flow:billing>tech|unresolved"] == -1
    assert delta["flow:billing>sales|unresolved"] == 1


def test_dimensions_of_an_unresolved_contact() -> None:
    c = Counted(hour=0, outcome="handled", queue="billing", channel="voice", agent="ann",
                segment=None, participates=True, status=STATUS_UNRESOLVED, is_repeat=False,
                transferred=False, surveys=0, survey_unresolved=0, csat_sum=0, csat_count=0,
                nps_promoters=0, nps_detractors=0, nps_count=0, ces_sum=0, ces_count=0,
                identified=True, reason="card", led_queue="tech", led_reason="loan",
                led_channel="chat", cost=6500, led_cost=3200)
    counts: dict = {}
    add_change(counts, None, c)
    fields = expand(counts)[0]
    assert fields["reason:card|unresolved"] == 1
    assert fields["reason:card|contacts"] == 1
    assert fields["reason:card|led_cost"] == 3200
    assert fields["queue_reason:billing>card|unresolved"] == 1
    assert fields["queue_agent:billing>ann|fcr_total"] == 1
    assert fields["flow:billing>tech|unresolved"] == 1
    assert fields["flow:billing>tech|led_cost"] == 3200
    assert fields["all|cost"] == fields["all|settled_cost"] == 6500
    assert "all|repeat_cost" not in fields  # not a repeat
    # Driver dimensions carry only the driver fields.
    assert {f.rpartition("|")[2] for f in fields if f.startswith(("queue_", "flow:"))} == {
        "fcr_total", "unresolved", "led_cost"}
    # Retracting it leaves nothing.
    add_change(counts, c, None)
    assert expand(counts) == {}


def test_a_contact_counted_before_reasons_retracts_nothing_under_reason() -> None:
    old = Counted(0, "handled", "billing", "voice", "ann", None, True, STATUS_RESOLVED, False,
                  False, 0, 0, 0, 0, 0, 0, 0, 0, 0, True)  # an older version's tuple
    assert Counted.from_tuple(old.to_tuple()[:20]) == old
    counts: dict = {}
    add_change(counts, old, None)
    assert not [f for f in expand(counts)[0] if f.startswith(("reason:", "queue_", "flow:"))]


@pytest.mark.parametrize("name", ["billing", "a>b", "50%", "%3E", "x>%>y"])
def test_driver_names_escape_the_separator(name: str) -> None:
    assert ">" not in driver_value(name)
    assert driver_name(driver_value(name)) == name


def test_reasons_and_where_they_led_are_capped() -> None:
    caps = LabelCaps(2, 10, 10, reasons=1)
    events = [call("a", 0, reason="card"), call("b", 5, queue="tech", reason="loan"),
              call("c", 9, queue="sales", reason="loan")]
    found = counted_after(events, 10, caps=caps)
    assert found["a"].reason == "card"  # first seen: kept
    assert found["b"].reason == OTHER  # no room left
    assert found["a"].led_reason == OTHER
    assert found["a"].led_queue == "tech"  # billing, tech kept
    assert found["b"].queue == "tech"
    assert found["c"].queue == OTHER
    assert found["b"].led_queue == OTHER  # sales: no room left
    assert caps.reason in caps.all()


def test_repeats_are_priced_at_the_repeat_s_queue_and_channel() -> None:
    caps = LabelCaps(10, 10, 10, 10, ContactCosts("EUR", {"voice": 5000, "chat": 2000},
                                                  {"tech": 9000}))
    events = [call("a", 0), call("b", 5, queue="tech", channel="chat"),
              call("c", 9, queue="sales", channel="chat", outcome="abandoned")]
    found = counted_after(events, 10, caps=caps)
    assert (found["a"].cost, found["a"].led_cost) == (5000, 9000)  # tech overrides chat
    assert (found["b"].cost, found["b"].led_cost) == (9000, 0)
    assert found["c"].cost == 0  # not handled: no cost


def row(unresolved: int, fcr_total: int = 0, resolved: int = 0, cost: int = 0) -> DriverCounts:
    return DriverCounts(unresolved, fcr_total, resolved, cost)


@pytest.mark.parametrize(("rows", "limit", "expected"), [
    # sorted by unresolved, ties by name; shares of the rows' total
    ({"a": row(2), "b": row(6), "c": row(2)}, 20,
     [("b", 6, 0.6, 0.6, 1), ("a", 2, 0.2, 0.8, 1), ("c", 2, 0.2, 1.0, 1)]),
    # past the limit, summed into `other` with the folded names
    ({"a": row(5), "b": row(3), "c": row(1), OTHER: row(1)}, 2,
     [("a", 5, 0.5, 0.5, 1), ("b", 3, 0.3, 0.8, 1), (OTHER, 2, 0.2, 1.0, 2)]),
    # `other` comes last even when it is the largest; rows without unresolved are left out
    ({"a": row(1), OTHER: row(3), "z": row(0, 5, 5)}, 20,
     [("a", 1, 0.25, 0.25, 1), (OTHER, 3, 0.75, 1.0, 1)]),
    ({}, 20, []),
])
def test_pareto(rows: dict[str, DriverCounts], limit: int,
                expected: list[tuple[str, int, float, float, int]]) -> None:
    got = [(r.driver, r.counts.unresolved, round(r.share, 9), round(r.cumulative_share, 9),
            r.drivers) for r in pareto(rows, limit)]
    assert got == expected


def test_a_row_s_fcr_and_cost_sum_into_other() -> None:
    table = pareto({"a": row(2, 10, 8, 1000), "b": row(1, 4, 3, 500),
                    "c": row(1, 2, 1, 250)}, 1)
    assert table[0].counts.fcr == pytest.approx(0.8)
    assert table[1].counts == row(2, 6, 4, 750)
    assert row(0).fcr is None


@pytest.mark.parametrize(("by", "queue", "kind"), [
    ("reason", None, "reason"), ("reason", "billing", "queue_reason"),
    ("agent", None, "agent"), ("agent", "billing", "queue_agent"),
    ("queue", "billing", "queue"), ("origin_queue>repeat_queue", None, "flow"),
])
def test_driver_kind(by: str, queue: str | None, kind: str) -> None:
    assert driver_kind(by, queue) == kind


FROM, TO = "2026-08-01T00:00:00Z", "2026-08-02T00:00:00Z"


@pytest.mark.parametrize(("pairs", "expected"), [
    ([("from", FROM), ("to", TO), ("by", "reason")], "reason|None|20"),
    ([("from", FROM), ("to", TO), ("by", "agent"), ("queue", "billing"), ("limit", "200")],
     "agent|billing|200"),
    ([("from", FROM), ("to", TO)], "'by' must be one of"),
    ([("from", FROM), ("to", TO), ("by", "channel")], "'by' must be one of"),
    ([("from", FROM), ("to", TO), ("by", "reason"), ("limit", "0")], "'limit' must be"),
    ([("from", FROM), ("to", TO), ("by", "reason"), ("limit", "201")], "'limit' must be"),
    ([("from", FROM), ("to", TO), ("by", "reason"), ("channel", "voice")], "unknown parameter"),
    ([("from", FROM), ("to", TO), ("by", "reason"), ("by", "queue")], "more than once"),
    ([("from", FROM), ("to", FROM), ("by", "reason")], "'to' must be after 'from'"),
    ([("from", "2026-08-01T00:30:00Z"), ("to", TO), ("by", "reason")], "on the hour"),
])
def test_drivers_query(pairs: list[tuple[str, str]], expected: str) -> None:
    got = drivers_query(pairs)
    if isinstance(got, str):
        assert expected in got
    else:
        assert f"{got[2]}|{got[3]}|{got[4]}" == expected


def test_an_unresolved_contact_counts_once_per_kind() -> None:
    """Summed over every row of a kind, the unresolved contacts are the centre's."""
    events = [call("a", 0, reason="card"), call("b", 5, queue="tech", reason="loan"),
              call("c", 9, queue="sales"), call("d", 10, customer="cust-2"),
              transfer("d", 10.5, customer="cust-2")]
    totals: Counter[str] = Counter()
    for customer in ("cust-1", "cust-2"):
        state = new_state(events[0])
        for event in events:
            if event.header.customer_id == customer:
                apply_event(state, event)
        for fields in settle(state, ts(11), POLICY).counter_deltas.values():
            totals.update(fields)
    assert totals["all|unresolved"] == 3
    for kind in ("reason:", "flow:", "queue_reason:", "queue_agent:"):
        assert sum(n for f, n in totals.items()
                   if f.startswith(kind) and f.endswith("|unresolved")) == 3
