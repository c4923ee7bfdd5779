"""Bounded per customer: a noisy customer's further contacts are held apart, and fields
outside the contract are stored only up to a small size."""

from __future__ import annotations

import json

from service.domain.engine import (
    apply_event,
    held_apart,
    new_state,
    overflows,
    settle,
    state_key,
)
from service.domain.events import ContactEvent
from service.domain.policy import Policy
from service.domain.records import EXTRA_DROPPED, MAX_EXTRA_BYTES, ContactRecord, CustomerState
from service.domain.summary import customer_summary
from tests.unit.builders import call, survey, transfer, ts

LIMIT = 3


def _fold(events: list[ContactEvent], limit: int = LIMIT) -> dict[str, CustomerState]:
    """What the worker does per event: route, then apply (states by key)."""
    states: dict[str, CustomerState] = {}
    for event in events:
        key = state_key(event)
        state = states.setdefault(key, new_state(event))
        if overflows(state, event, limit):
            state.noisy = True
            key, fresh = held_apart(event)
            state = states.setdefault(key, fresh)
        apply_event(state, event)
    return states


def test_contacts_past_the_limit_are_held_apart() -> None:
    events = [call(f"c{i}", i, "0000") for i in range(6)]
    states = _fold(events)
    customer = states["c:0000"]
    assert customer.noisy
    assert sorted(customer.contacts) == ["c0", "c1", "c2"]
    for i in (3, 4, 5):
        apart = states[f"u:c{i}"]
        assert apart.customer_id is None
        assert apart.alias == "0000"
        assert list(apart.contacts) == [f"c{i}"]


def test_a_contact_already_held_is_not_held_apart() -> None:
    events = [call(f"c{i}", i, "0000") for i in range(3)]
    states = _fold(events)
    again = call("c1", 5, "0000", event_id="c1-again")
    assert not overflows(states["c:0000"], again, LIMIT)


def test_transfers_and_surveys_follow_their_contact() -> None:
    events: list[ContactEvent] = [call(f"c{i}", i, "0000") for i in range(4)]
    events += [transfer("c3", 3.1, "0000"), survey("c3", 4, "0000", resolved=False),
               survey("c0", 4, "0000", resolved=True)]
    states = _fold(events)
    assert [t.contact_id for t in states["u:c3"].transfers] == ["c3"]
    assert [s.contact_id for s in states["u:c3"].surveys] == ["c3"]
    assert [s.contact_id for s in states["c:0000"].surveys] == ["c0"]


def test_below_the_limit_nothing_changes() -> None:
    events = [call(f"c{i}", i, "cust-1") for i in range(LIMIT)]
    states = _fold(events)
    assert list(states) == ["c:cust-1"]
    assert not states["c:cust-1"].noisy
    assert not overflows(states["c:cust-1"], call("c9", 9, "cust-1"), 0)


def test_a_contact_held_apart_is_counted_as_unidentified_under_its_customer() -> None:
    policy = Policy()
    states = _fold([call(f"c{i}", i, "0000") for i in range(LIMIT + 1)])
    apart = states[f"u:c{LIMIT}"]
    settled = settle(apart, ts(LIMIT), policy)
    (update,) = settled.updates
    assert update.view["customer_id"] == "0000"
    assert update.view["is_repeat"] is False
    assert update.view["resolution"] is None  # not in the FCR population
    (row,) = settled.counts.values()
    assert row[0] == 1  # contacts
    assert row[1] == 0  # identified
    assert row[5] == 0  # fcr_total
    # Without the limit the same contact would have been a repeat of c2.
    whole = _fold([call(f"c{i}", i, "0000") for i in range(LIMIT + 1)], limit=0)["c:0000"]
    views = {u.contact_id: u.view for u in settle(whole, ts(LIMIT), policy).updates}
    assert views[f"c{LIMIT}"]["is_repeat"] is True


def test_the_lookup_says_noisy_and_the_state_round_trips() -> None:
    states = _fold([call(f"c{i}", i, "0000") for i in range(LIMIT + 2)])
    customer = states["c:0000"]
    back = CustomerState.from_dict(json.loads(json.dumps(customer.to_dict())))
    assert back.noisy
    assert customer_summary(back, ts(LIMIT + 2), Policy())["noisy"] is True
    apart = CustomerState.from_dict(json.loads(json.dumps(states["u:c4"].to_dict())))
    assert apart.alias == "0000"
    plain = states["c:0000"]
    plain.noisy = False
    assert "n" not in plain.to_dict()
    assert customer_summary(plain, ts(LIMIT + 2), Policy())["noisy"] is False


def test_extra_fields_are_stored_up_to_a_small_size() -> None:
    event = call("c1", 0, crm_case="X-1", notes="n" * 60_000, channel_id="abc",
                 nested={"a": [1, 2, {"b": "c" * 3000}]})
    record = ContactRecord.of(event)
    assert record.extra["crm_case"] == "X-1"
    assert record.extra["channel_id"] == "abc"  # a small field after a large one still fits
    assert record.extra[EXTRA_DROPPED] == ["notes", "nested"]
    assert len(json.dumps(record.to_list())) < MAX_EXTRA_BYTES + 1000
    small = ContactRecord.of(call("c2", 0, crm_case="X-2"))
    assert small.extra == {"crm_case": "X-2"}
    assert ContactRecord.of(call("c3", 0)).extra == {}


def test_the_enriched_contact_carries_the_kept_fields_and_names_the_others() -> None:
    event = call("c1", 0, crm_case="X-1", notes="n" * 60_000)
    state = new_state(event)
    apply_event(state, event)
    (update,) = settle(state, ts(0), Policy()).updates
    assert update.view["crm_case"] == "X-1"
    assert "notes" not in update.view
    assert update.view[EXTRA_DROPPED] == ["notes"]
