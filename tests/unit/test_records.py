"""The stored form of a customer's state: the current format and states written before it."""

from __future__ import annotations

import copy
from typing import Any

from service.domain.engine import apply_event, settle
from service.domain.policy import Policy
from service.domain.records import STATE_FORMAT, CustomerState, Emitted
from tests.unit.builders import call, survey, ts

# A state as stored before the format carried a version: no "v", no "l" (live_from), "b"
# (band) or "j" (joins), entries of "e" without the checksum of their inputs (their view's
# digest instead), and a snapshot whose drop history ("p"[4]) keeps every entry.
OLD_STATE: dict[str, Any] = {
    "cu": "cust-1",
    "c": [["c1", "c1-ended", 1772409600.0, "2026-03-02T00:00:00Z", "2026-03-01T23:54:00Z",
           "voice", "billing", "handled", "agent-1", None, None, 30.0, 0.0, 0.0, None],
          ["c2", "c2-ended", 1772517600.0, "2026-03-03T06:00:00Z", "2026-03-03T05:54:00Z",
           "voice", "billing", "handled", "agent-1", None, None, 30.0, 0.0, 0.0, None]],
    "t": [["c1", "c1-transfer", 1772411400.0, "billing", "tech"]],
    "s": [["c2", "c2-survey-31", 1772521200.0, "2026-03-03T07:00:00Z", 2, None, None, False]],
    "x": [],
    "e": {"c1": [1, 3209515150, [1772409600, "handled", "billing", "voice", "agent-1", None,
                                  True, 3, False, True, 0, 0, 0, 0, 0, 0, 0, 0, 0, True],
                 [70.0, 72.25]],
          "c2": [1, 3755889192, [1772517600, "handled", "billing", "voice", "agent-1", None,
                                  True, 3, True, False, 1, 1, 2, 1, 0, 0, 0, 0, 0, True],
                 [66.15, 52.79]]},
    "p": [1772236800.0, 40.0, True,
          [[1772229600.0, 80.0, "survey_csat"], [1772236800.0, 40.0, "abandoned"]],
          [[1772222400.0, 60.0], [1772229600.0, 80.0], [1772233200.0, 50.0],
           [1772235000.0, 55.0], [1772236800.0, 40.0]],
          1772236800.0],
    "a": [True, 1],
    "h": [None, None, [], [], [1772521200.0, 27.24, 45.01,
                               ["transfer", "repeat_contact", "survey_csat",
                                "survey_unresolved"]], None, None],
}


def test_a_state_is_stored_with_its_format_and_reads_back_the_same() -> None:
    state = CustomerState(customer_id="cust-1")
    apply_event(state, call("a", 0))
    apply_event(state, survey("a", 1, csat=4))
    settle(state, ts(2), Policy())
    stored = state.to_dict()
    assert stored["v"] == STATE_FORMAT
    assert CustomerState.from_dict(copy.deepcopy(stored)).to_dict() == stored


def test_a_state_stored_before_the_format_version_reads_as_it_did() -> None:
    given = copy.deepcopy(OLD_STATE)
    state = CustomerState.from_dict(given)
    assert state.customer_id == "cust-1"
    assert list(state.contacts) == ["c1", "c2"]
    assert (state.live_from, state.band, state.joins) == (None, None, (0, 0, 0, 0))
    assert state.emitted["c1"] == Emitted(1, 3209515150, tuple(OLD_STATE["e"]["c1"][2]),
                                          (70.0, 72.25), None)
    assert (state.alerted_at_risk, state.alert_version) == (True, 1)
    # Only the entries that can still be the peak of a drop are kept (as reading the
    # snapshot into a curve always kept them).
    assert state.snapshot.recent == [(1772229600.0, 80.0), (1772235000.0, 55.0),
                                     (1772236800.0, 40.0)]
    assert state.snapshot.score == 40.0
    assert state.history is not None
    assert state.history.entered is not None
    stored = state.to_dict()
    assert stored == {
        **OLD_STATE,
        "v": STATE_FORMAT,
        "e": {k: [*v, None] for k, v in OLD_STATE["e"].items()},
        "p": [*OLD_STATE["p"][:4],
              [[1772229600.0, 80.0], [1772235000.0, 55.0], [1772236800.0, 40.0]],
              OLD_STATE["p"][5]],
        "l": None, "b": None, "j": [0, 0, 0, 0],
    }
    assert given == OLD_STATE  # reading never changes what it was given


def test_a_state_stored_before_the_format_version_settles_as_it_did() -> None:
    """The figures are what the release before the format version published from this state."""
    state = CustomerState.from_dict(copy.deepcopy(OLD_STATE))
    first = settle(state, ts(31), Policy())
    assert [(u.contact_id, u.version, u.view["resolution"], u.view["perception"])
            for u in first.updates] == [
        ("c1", 2, "unresolved", {"before": 42.83, "after": 49.15}),
        ("c2", 2, "unresolved", {"before": 47.7, "after": 41.81})]
    assert (first.band_change, first.joins, first.next_due) == ((None, 2), (1, 1, 1, 1),
                                                                1775520000.0)
    assert first.alerts == []
    assert settle(state, ts(24 * 3), Policy()).updates == []
    last = settle(state, ts(24 * 40), Policy())
    assert last.idle is True
    assert [(a.alert, a.version, a.score) for a in last.alerts] == [("at_risk_left", 2, 63.14)]
    assert state.snapshot.score is not None
    assert round(state.snapshot.score, 6) == 56.288584
