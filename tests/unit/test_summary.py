"""The customer lookup's answer: the detailed state, and the history kept once it is dropped."""

from __future__ import annotations

import itertools

from service.domain.engine import apply_event, fold, settle
from service.domain.policy import PerceptionPolicy, Policy
from service.domain.records import HISTORY_CONTACTS, CustomerState
from service.domain.summary import customer_summary
from tests.unit.builders import DAY, call, survey, transfer, ts

POLICY = Policy()
H = 24  # hours in a day, for the builders' hour-based times


def test_an_idle_customer_is_answered_from_the_history_and_the_snapshot() -> None:
    state, _, _ = fold(None, call("a", 0, wait=30), ts(0), POLICY)
    apply_event(state, call("b", 3 * H, reason="card"))  # a repeat: "a" turns unresolved
    apply_event(state, transfer("b", 3 * H))
    apply_event(state, call("c", 20 * H, outcome="abandoned", channel="chat"))
    settle(state, ts(20 * H), POLICY)
    before = customer_summary(state, ts(20 * H), POLICY)
    assert before["detail"] == "recent"
    assert before["history"]["contacts"] == 3
    assert before["history"]["unresolved"] == 2  # a (repeat) and b (transferred)
    # 2L + 2W = 28 days after the last contact, and a prune step later, nothing is held.
    idle_at = ts(20 * H) + 40 * DAY
    out = settle(state, idle_at, POLICY)
    assert out.idle is True
    assert state.is_empty()
    after = customer_summary(state, idle_at, POLICY)
    assert after["detail"] == "summary"
    assert after["recent_contacts"] == []
    assert after["open_contacts"] == 0
    history = after["history"]
    assert history["first_contact_at"] == "2026-03-02T00:00:00.000Z"
    assert history["last_contact_at"] == "2026-03-22T00:00:00.000Z"
    assert (history["days"], history["contacts"], history["unresolved"]) == (90, 3, 2)
    assert [(c["contact_id"], c["outcome"], c["resolution"]) for c in history["last_contacts"]
            ] == [("c", "abandoned", None), ("b", "handled", "unresolved"),
                  ("a", "handled", "unresolved")]
    # The score keeps drifting from the last signal; the same curve as before the records went.
    assert after["perception"]["points"] == before["perception"]["points"]
    later = customer_summary(state, idle_at + 14 * DAY, POLICY)["perception"]["score"]
    assert abs(later - 70) < abs(after["perception"]["score"] - 70)
    # Stored and read back, the same answer.
    again = CustomerState.from_dict(state.to_dict())
    assert customer_summary(again, idle_at, POLICY) == after


def test_the_counts_cover_the_90_utc_days_ending_with_the_watermarks_day() -> None:
    state, _, _ = fold(None, call("a", 0), ts(0), POLICY)
    apply_event(state, call("b", 10 * H + 5))
    settle(state, ts(10 * H + 5), POLICY)
    settle(state, ts(10 * H) + 50 * DAY, POLICY)
    assert state.is_empty()
    # Day 0 is the 90th day back from day 89, and out of the 90 days ending with day 90.
    day89 = customer_summary(state, ts(89 * H + 23), POLICY)["history"]
    day90 = customer_summary(state, ts(90 * H), POLICY)["history"]
    assert (day89["contacts"], day90["contacts"]) == (2, 1)
    assert day90["first_contact_at"] == "2026-03-02T00:00:00.000Z"  # never forgotten
    # Counts that left the horizon are dropped from the stored history as records go.
    apply_event(state, call("c", 100 * H))
    settle(state, ts(100 * H), POLICY)
    settle(state, ts(100 * H) + 40 * DAY, POLICY)
    assert state.history is not None
    assert [d[0] for d in state.history.days] == [int(ts(100 * H) // DAY)]
    assert customer_summary(state, ts(100 * H) + 40 * DAY, POLICY)["history"]["contacts"] == 1


def test_the_history_keeps_the_latest_verdicts_only_and_any_order_gives_the_same() -> None:
    events = [call(f"c{i}", i * 2 * H) for i in range(HISTORY_CONTACTS + 2)]
    events.append(survey("c6", 12 * H + 1, resolved=False))
    histories = set()
    for order in itertools.islice(itertools.permutations(events), 0, None, 997):
        state, _, _ = fold(None, order[0], ts(0), POLICY)
        for event in order[1:]:
            apply_event(state, event)
            settle(state, ts(12 * H + 1), POLICY)
        settle(state, ts(12 * H) + 60 * DAY, POLICY)
        assert state.is_empty()
        h = state.history
        assert h is not None
        histories.add(repr((h.first, h.last, h.days, h.contacts)))
    assert len(histories) == 1
    answer = customer_summary(state, ts(12 * H) + 60 * DAY, POLICY)["history"]
    assert [c["contact_id"] for c in answer["last_contacts"]] == ["c6", "c5", "c4", "c3", "c2"]
    assert [c["resolution"] for c in answer["last_contacts"]] == ["unresolved"] * 5


def test_the_last_at_risk_episode_is_kept_as_its_alerts_said_it() -> None:
    state, out, _ = fold(None, survey("a", 0, csat=1), ts(0), POLICY)
    entered = out.alerts[0]
    answer = customer_summary(state, ts(1), POLICY)
    assert answer["perception"]["at_risk"] is True
    assert answer["history"]["last_at_risk"] == {
        "entered": {"at": "2026-03-02T00:00:00.000Z", "score": entered.score,
                    "drop": entered.drop, "causes": ["survey_csat"]},
        "left": None}
    left = settle(state, ts(14 * H), POLICY).alerts[0]  # settled at day 14: drifted to 52.5
    assert (left.alert, left.score) == ("at_risk_left", 52.5)
    assert customer_summary(state, ts(14 * H), POLICY)["history"]["last_at_risk"]["left"] == {
        "at": "2026-03-16T00:00:00.000Z", "score": 52.5, "drop": left.drop,
        "causes": ["survey_csat"]}


def test_a_customer_still_at_risk_when_idle_leaves_with_the_cause_idle() -> None:
    slow = Policy(perception=PerceptionPolicy(half_life=1000 * DAY))  # the score stays low
    state, out, _ = fold(None, survey("a", 0, csat=1), ts(0), slow)
    assert [a.alert for a in out.alerts] == ["at_risk_entered"]
    out = settle(state, ts(0) + 40 * DAY, slow)
    assert out.idle is True
    assert [(a.alert, a.version, a.causes) for a in out.alerts] == [
        ("at_risk_left", 2, ("idle",))]
    answer = customer_summary(state, ts(0) + 40 * DAY, slow)
    assert answer["perception"]["score"] < 40
    assert answer["perception"]["at_risk"] is False  # as the last alert said
    assert answer["history"]["last_at_risk"]["left"] == {
        "at": "2026-04-11T00:00:00.000Z", "score": 70.0, "drop": 0.0, "causes": ["idle"]}
    # Back after weeks: the curve starts from the baseline, the alert versions go on.
    apply_event(state, survey("a", 41 * H, csat=1, event_id="s2"))
    again = settle(state, ts(41 * H), slow)
    assert [(a.alert, a.version, a.score) for a in again.alerts] == [
        ("at_risk_entered", 3, 35.0)]
    episode = customer_summary(state, ts(41 * H), slow)["history"]["last_at_risk"]
    assert episode["entered"]["at"] == "2026-04-12T00:00:00.000Z"
    assert episode["left"] is None


def test_a_state_stored_before_the_history_existed_still_loads() -> None:
    state, _, _ = fold(None, call("a", 0), ts(1), POLICY)
    data = state.to_dict()
    assert "h" not in data  # nothing dropped yet: no bytes spent on the history
    loaded = CustomerState.from_dict(data)
    assert loaded.history is None
    settle(loaded, ts(0) + 40 * DAY, POLICY)
    stored = loaded.to_dict()
    assert stored["h"][0] == ts(0)
    assert CustomerState.from_dict(stored).to_dict() == stored
