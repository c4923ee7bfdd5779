"""Survey truth: what surveys say against what customers do, table by table, and the counts a
contact adds as its verdict changes."""

from __future__ import annotations

from typing import Any

import pytest

from service.domain import survey_truth
from service.domain.counters import (
    FIELDS,
    SAID_NOTHING,
    SAID_RESOLVED,
    SAID_UNRESOLVED,
    Counted,
    vector,
)
from service.domain.engine import fold, settle
from service.domain.policy import Policy
from service.domain.records import CustomerState
from tests.unit.builders import DAY, H, call, survey, ts

POLICY = Policy()


def _counted(**changes: Any) -> Counted:
    base: dict[str, Any] = dict(
        hour=0, outcome="handled", queue="billing", channel="voice", agent="a", segment=None,
        participates=True, status=3, is_repeat=False, transferred=False, surveys=1,
        survey_unresolved=0, csat_sum=4, csat_count=1, nps_promoters=1, nps_detractors=0,
        nps_count=1, ces_sum=2, ces_count=1, identified=True)
    base.update(changes)
    return Counted(**base)


def _new_fields(c: Counted) -> dict[str, int]:
    row = dict(zip(FIELDS, vector(c), strict=True))
    return {k: n for k, n in row.items() if k in survey_truth.FIELDS[2:] and n}


@pytest.mark.parametrize(("changes", "expected"), [
    # said resolved, then repeated: the survey did not tell the truth
    ({"said": SAID_RESOLVED, "caused_repeat": True, "status": 3},
     {"said_resolved": 1, "said_resolved_repeated": 1, "csat_sum_unresolved": 4,
      "csat_count_unresolved": 1, "nps_promoters_unresolved": 1, "nps_count_unresolved": 1}),
    ({"said": SAID_RESOLVED, "status": 2},
     {"said_resolved": 1, "csat_sum_resolved": 4, "csat_count_resolved": 1,
      "nps_promoters_resolved": 1, "nps_count_resolved": 1}),
    ({"said": SAID_UNRESOLVED, "status": 3},  # said not resolved, no repeat (so far)
     {"said_unresolved": 1, "csat_sum_unresolved": 4, "csat_count_unresolved": 1,
      "nps_promoters_unresolved": 1, "nps_count_unresolved": 1}),
    ({"said": SAID_UNRESOLVED, "caused_repeat": True, "status": 3, "nps_promoters": 0,
      "nps_detractors": 1},
     {"said_unresolved": 1, "said_unresolved_repeated": 1, "csat_sum_unresolved": 4,
      "csat_count_unresolved": 1, "nps_detractors_unresolved": 1, "nps_count_unresolved": 1}),
    ({"said": SAID_NOTHING, "status": 1}, {}),  # pending: neither resolved nor unresolved
    ({"said": SAID_RESOLVED, "participates": False, "status": 0}, {}),  # not in FCR
])
def test_what_a_contact_adds(changes: dict[str, Any], expected: dict[str, int]) -> None:
    assert _new_fields(_counted(**changes)) == expected


def test_counts_stored_before_survey_truth_decode_and_retract_nothing_new() -> None:
    old = _counted(said=SAID_RESOLVED, caused_repeat=True).to_tuple()[:20]  # an older version's
    decoded = Counted.from_tuple(old)
    assert (decoded.said, decoded.caused_repeat) == (SAID_NOTHING, False)
    assert _new_fields(decoded) == {"csat_sum_unresolved": 4, "csat_count_unresolved": 1,
                                    "nps_promoters_unresolved": 1, "nps_count_unresolved": 1}


@pytest.mark.parametrize(("counts", "expected"), [
    ({}, {"said_resolved_repeated": None, "said_unresolved_not_repeated": None}),
    ({"said_resolved": 8, "said_resolved_repeated": 2, "said_unresolved": 4,
      "said_unresolved_repeated": 1},
     {"said_resolved_repeated": 0.25, "said_unresolved_not_repeated": 0.75}),
    ({"said_resolved": 5}, {"said_resolved_repeated": 0.0, "said_unresolved_not_repeated": None}),
])
def test_gap(counts: dict[str, int], expected: dict[str, float | None]) -> None:
    assert survey_truth.gap(counts) == expected


@pytest.mark.parametrize(("counts", "expected"), [
    ({}, {"resolved": {"csat": None, "nps": None}, "unresolved": {"csat": None, "nps": None}}),
    ({"csat_sum_resolved": 18, "csat_count_resolved": 4, "nps_promoters_resolved": 3,
      "nps_detractors_resolved": 1, "nps_count_resolved": 4, "csat_sum_unresolved": 4,
      "csat_count_unresolved": 2, "nps_detractors_unresolved": 2, "nps_count_unresolved": 2},
     {"resolved": {"csat": 4.5, "nps": 50.0}, "unresolved": {"csat": 2.0, "nps": -100.0}}),
])
def test_by_resolution(counts: dict[str, int], expected: dict[str, Any]) -> None:
    assert survey_truth.by_resolution(counts) == expected


@pytest.mark.parametrize(("counts", "expected"), [
    ({}, None), ({"ces_sum": 9, "ces_count": 4}, 2.25), ({"ces_sum": 3}, None)])
def test_ces(counts: dict[str, int], expected: float | None) -> None:
    assert survey_truth.ces(counts) == expected


def test_answer_carries_the_counts_behind_each_share() -> None:
    out = survey_truth.answer({"said_unresolved": 3, "said_unresolved_repeated": 1,
                               "ces_sum": 5, "ces_count": 2})
    assert out["ces"] == 2.5
    assert out["survey_gap"] == {
        "said_resolved": 0, "said_resolved_repeated": 0, "said_unresolved": 3,
        "said_unresolved_not_repeated": 2, "said_resolved_repeated_share": None,
        "said_unresolved_not_repeated_share": 2 / 3}
    assert out["by_resolution"]["resolved"]["csat_answers"] == 0


def _totals(counts: list[dict[int, dict[str, int]]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for deltas in counts:
        for bucket in deltas.values():
            for field, n in bucket.items():
                if field.startswith("queue:billing|"):
                    name = field.split("|")[1]
                    out[name] = out.get(name, 0) + n
    return {k: n for k, n in out.items() if n and k in survey_truth.FIELDS}


def test_a_survey_saying_resolved_then_a_repeat_moves_the_contact_across() -> None:
    """The contact is first counted as said resolved (and pending), then, when the repeat
    comes, as said resolved and repeated, unresolved."""
    deltas = []
    state: CustomerState | None = None
    for event, at in ((call("a", 0), 0), (survey("a", 1, resolved=True, csat=5, ces=2), 1),
                      (call("b", 30), 30)):
        state, out, _ = fold(state, event, ts(at), POLICY)
        deltas.append(out.counter_deltas)
        if at == 1:
            assert _totals(deltas) == {"said_resolved": 1, "ces_sum": 2, "ces_count": 1}
    assert _totals(deltas) == {"said_resolved": 1, "said_resolved_repeated": 1,
                               "csat_sum_unresolved": 5, "csat_count_unresolved": 1,
                               "ces_sum": 2, "ces_count": 1}
    assert state is not None
    deltas.append(settle(state, ts(30) + 10 * DAY, POLICY).counter_deltas)  # b resolved
    assert _totals(deltas)["said_resolved_repeated"] == 1


def test_a_survey_saying_unresolved_without_a_repeat() -> None:
    state, out, _ = fold(None, call("a", 0), ts(0), POLICY)
    deltas = [out.counter_deltas]
    state, out, _ = fold(state, survey("a", 2, resolved=False, csat=2), ts(2), POLICY)
    deltas.append(out.counter_deltas)
    deltas.append(settle(state, ts(2) + 8 * DAY + H, POLICY).counter_deltas)
    assert _totals(deltas) == {"said_unresolved": 1, "csat_sum_unresolved": 2,
                               "csat_count_unresolved": 1}


def test_the_worked_example_of_the_definitions() -> None:
    """docs/metrics-definitions.md, Survey truth: the worked example (hours from Monday)."""
    by_customer = {
        "A": [call("a1", 9, "A"), survey("a1", 10, "A", resolved=True, csat=5),
              call("a2", 34, "A")],
        "B": [call("b1", 9.5, "B"), survey("b1", 11, "B", resolved=True, csat=4)],
        "C": [call("c1", 10, "C"), survey("c1", 12, "C", resolved=False, csat=2),
              survey("c1", 30, "C", resolved=True, event_id="c1-second")],
        "D": [call("d1", 11, "D"), survey("d1", 13, "D", resolved=False, csat=1, ces=6),
              call("d2", 58, "D")],
        "E": [call("e1", 12, "E")],
    }
    deltas = []
    for events in by_customer.values():
        state: CustomerState | None = None
        for event in events:
            state, out, _ = fold(state, event, event.header.occurred_at.timestamp(), POLICY)
            deltas.append(out.counter_deltas)
        assert state is not None
        deltas.append(settle(state, ts(58) + 8 * DAY, POLICY).counter_deltas)
    totals = _totals(deltas)
    assert survey_truth.gap(totals) == {"said_resolved_repeated": 1 / 3,
                                        "said_unresolved_not_repeated": 0.0}
    assert survey_truth.by_resolution(totals) == {
        "resolved": {"csat": 4.0, "nps": None}, "unresolved": {"csat": 8 / 3, "nps": None}}
    assert survey_truth.ces(totals) == 6.0
