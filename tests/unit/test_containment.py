"""Failed self-service and abandon callbacks, table by table (domain/containment)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from service.domain.containment import containment_figures
from service.domain.counters import hour_of
from service.domain.engine import apply_event, new_state, settle, state_key
from service.domain.events import ContactEvent
from service.domain.policy import DAY, Policy, QueuePolicy
from service.domain.records import CustomerState
from tests.unit.builders import call, ts

# A window of one day for every queue but `sales` (two days).
POLICY = Policy(default=QueuePolicy(repeat_window=DAY),
                per_queue={"sales": QueuePolicy(repeat_window=2 * DAY)}, allowed_lateness=3 * DAY)
NAMES = ("self_service_identified", "failed_containment", "abandoned_identified",
         "abandon_callbacks")


def counts(events: Sequence[ContactEvent], watermark_hours: float, *, stored: bool = False,
           dimension: str = "all") -> dict[str, int]:
    """The containment counters of `dimension`, all hours summed, after folding `events` in
    the given order with the watermark at the end (`stored`: each state goes through its
    stored form between events, so every settle derives everything again)."""
    states: dict[str, CustomerState] = {}
    total: dict[str, int] = {}
    for event in events:
        key = state_key(event)
        state = states.setdefault(key, new_state(event))
        if stored:
            state = states[key] = CustomerState.from_dict(state.to_dict())
        apply_event(state, event)
        for delta in settle(state, ts(watermark_hours), POLICY).counter_deltas.values():
            for field, n in delta.items():
                dim, _, name = field.rpartition("|")
                if dim == dimension and name in NAMES:
                    total[name] = total.get(name, 0) + n
    return {name: n for name, n in total.items() if n}


def ss(contact: str, hours: float, customer: str | None = "cust-1", **kw: Any) -> ContactEvent:
    return call(contact, hours, customer, outcome="self_service", channel="chat", **kw)


def ab(contact: str, hours: float, customer: str | None = "cust-1", **kw: Any) -> ContactEvent:
    return call(contact, hours, customer, outcome="abandoned", **kw)


def handled(contact: str, hours: float, customer: str | None = "cust-1", **kw: Any
            ) -> ContactEvent:
    return call(contact, hours, customer, **kw)


FAILED = {"self_service_identified": 1, "failed_containment": 1}
CONTAINED = {"self_service_identified": 1}
CALLBACK = {"abandoned_identified": 1, "abandon_callbacks": 1}
NO_CALLBACK = {"abandoned_identified": 1}

CASES = [
    ("self-service then handled within the window", [ss("s", 0), handled("h", 5)], FAILED),
    ("self-service then handled exactly one window later", [ss("s", 0), handled("h", 24)],
     FAILED),
    ("self-service then handled just after the window", [ss("s", 0), handled("h", 24.01)],
     CONTAINED),
    ("the self-service queue's window decides", [ss("s", 0, queue="sales"), handled("h", 40)],
     FAILED),
    ("handled before the self-service contact does not count",
     [handled("h", 0), ss("s", 1)], CONTAINED),
    ("a second self-service or an abandon does not fail containment",
     [ss("s", 0), ss("s2", 1), ab("a", 2)],
     {"self_service_identified": 2, "abandoned_identified": 1}),
    ("another customer's handled contact does not count",
     [ss("s", 0), handled("h", 1, "cust-2")], CONTAINED),
    ("an unidentified self-service contact is outside the rate", [ss("s", 0, None)], {}),
    ("abandoned then a self-service contact: a callback", [ab("a", 0), ss("s", 3)],
     {**CALLBACK, "self_service_identified": 1}),
    ("abandoned then abandoned again: the first is a callback", [ab("a", 0), ab("b", 3)],
     {"abandoned_identified": 2, "abandon_callbacks": 1}),
    ("abandoned then handled after the window", [ab("a", 0), handled("h", 25)], NO_CALLBACK),
    ("the same time: the later contact_id follows", [ab("a", 0), handled("b", 0)], CALLBACK),
    ("the same time: an earlier contact_id does not", [ab("b", 0), handled("a", 0)],
     NO_CALLBACK),
]


@pytest.mark.parametrize(("events", "expected"), [(e, x) for _, e, x in CASES],
                         ids=[name for name, _, _ in CASES])
def test_containment_is_counted_in_any_arrival_order(events: list[ContactEvent],
                                                     expected: dict[str, int]) -> None:
    assert counts(events, 30) == expected
    assert counts(list(reversed(events)), 30) == expected
    assert counts(list(reversed(events)), 30, stored=True) == expected
    assert counts(events + events, 30) == expected  # duplicates change nothing


def test_counted_in_the_self_service_contacts_hour_queue_and_channel() -> None:
    events = [ss("s", 0, queue="ivr"), handled("h", 5, queue="billing")]
    assert counts(events, 30, dimension="queue:ivr") == FAILED
    assert counts(events, 30, dimension="channel:chat") == FAILED
    assert counts(events, 30, dimension="queue:billing") == {}


@pytest.mark.parametrize("stored", [False, True], ids=["in memory", "read from storage"])
def test_a_late_handled_contact_creates_a_failed_containment_without_a_new_view(
        stored: bool) -> None:
    state = new_state(ss("s", 0))
    apply_event(state, ss("s", 0))
    first = settle(state, ts(2), POLICY)
    assert [u.contact_id for u in first.updates] == ["s"]
    assert "all|failed_containment" not in first.counter_deltas[hour_of(ts(0))]
    if stored:  # the view is then compared by the checksum of its inputs
        state = CustomerState.from_dict(state.to_dict())
    apply_event(state, handled("h", 1))
    later = settle(state, ts(3), POLICY)
    assert later.counter_deltas[hour_of(ts(0))]["all|failed_containment"] == 1
    assert later.counter_deltas[hour_of(ts(0))]["queue:billing|failed_containment"] == 1
    # The self-service contact's view did not change: no new version of it.
    assert [u.contact_id for u in later.updates] == ["h"]
    # FCR's own definition is unchanged: the handled contact is no repeat.
    assert later.updates[0].view["is_repeat"] is False


def test_a_correction_moving_the_handled_contact_out_of_the_window_retracts_it() -> None:
    state = new_state(ss("s", 0))
    for event in (ss("s", 0), handled("h", 5)):
        apply_event(state, event)
    assert settle(state, ts(6), POLICY).counter_deltas[hour_of(ts(0))][
        "all|failed_containment"] == 1
    apply_event(state, handled("h", 30, event_id="h-corrected"))
    retracted = settle(state, ts(31), POLICY)
    assert retracted.counter_deltas[hour_of(ts(0))]["all|failed_containment"] == -1


def test_a_correction_turning_a_handled_contact_into_self_service_retracts_it() -> None:
    events = [ss("s", 0), handled("h", 5),
              call("h", 6, outcome="self_service", event_id="h-fixed")]
    assert counts(events, 30) == {"self_service_identified": 2}
    assert counts(list(reversed(events)), 30, stored=True) == {"self_service_identified": 2}


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, {"failed_containment_ratio": None, "abandon_callback_ratio": None}),
    ({"self_service": 5, "self_service_identified": 4, "failed_containment": 1,
      "abandoned": 3, "abandoned_identified": 2, "abandon_callbacks": 2},
     {"failed_containment_ratio": 0.25, "abandon_callback_ratio": 1.0}),
])
def test_rates_are_of_identified_contacts(fields: dict[str, int],
                                         expected: dict[str, float | None]) -> None:
    figures = containment_figures(fields)
    assert {k: figures[k] for k in expected} == expected
    assert figures["self_service"] == fields.get("self_service", 0)
