"""A customer's journey as the journey page reads it (domain/journey.py)."""

from __future__ import annotations

from service.domain.engine import apply_event, fold
from service.domain.journey import customer_journey
from service.domain.policy import Policy
from service.domain.records import CustomerState
from service.domain.summary import customer_summary
from tests.unit.builders import call, survey, transfer, ts

POLICY = Policy()


def _state(contacts: int) -> CustomerState:
    state, _, _ = fold(None, call("c0", 0, wait=600), ts(0), POLICY)
    for i in range(1, contacts):
        apply_event(state, call(f"c{i}", i, wait=600))
    return state


def test_every_contact_held_oldest_first_with_transfers_surveys_and_moves() -> None:
    state = _state(3)
    apply_event(state, transfer("c1", 1.2))
    apply_event(state, survey("c0", 0.5, csat=1, resolved=False))
    journey = customer_journey(state, ts(2), POLICY)
    contacts = journey["contacts"]
    assert [c["contact_id"] for c in contacts] == ["c0", "c1", "c2"]
    assert [c["repeat_of"] for c in contacts] == [None, "c0", "c1"]
    assert contacts[1]["transfers"] == [{"at": "2026-03-02T01:12:00.000Z",
                                         "from_queue": "billing", "to_queue": "tech"}]
    assert contacts[0]["surveys"] == [{"answered_at": "2026-03-02T00:30:00Z", "csat": 1,
                                       "nps": None, "ces": None, "resolved": False}]
    assert contacts[0]["wait"] == 600
    # Each contact's move of the curve; the last one ends where the curve is now (no drift:
    # the watermark is the last contact's time).
    assert contacts[0]["perception_before"] == 70.0
    assert contacts[-1]["perception_after"] == journey["score"]
    assert journey["at_risk_below"] == POLICY.perception.at_risk_below
    assert journey["contacts_held"] == 3


def test_the_whole_curve_not_only_the_last_20_points() -> None:
    state = _state(30)
    journey = customer_journey(state, ts(30), POLICY)
    summary = customer_summary(state, ts(30), POLICY)
    assert len(summary["perception"]["points"]) == 20
    assert len(journey["points"]) > 30  # a contact signal and a repeat signal per contact
    assert journey["points"][-20:] == summary["perception"]["points"]
    assert journey["score"] == summary["perception"]["score"]


def test_at_most_limit_contacts_the_latest() -> None:
    journey = customer_journey(_state(5), ts(5), POLICY, limit=2)
    assert [c["contact_id"] for c in journey["contacts"]] == ["c3", "c4"]
    assert journey["contacts_held"] == 5
