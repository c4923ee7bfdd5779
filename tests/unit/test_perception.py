"""The perception curve and at-risk alerts."""

from __future__ import annotations

from service.domain.engine import apply_event, fold, new_state, settle
from service.domain.perception import (
    CurveState,
    Signal,
    contact_signal,
    run_curve,
)
from service.domain.policy import PerceptionPolicy, Policy
from service.domain.summary import customer_summary
from tests.unit.builders import DAY, call, survey, ts

PP = PerceptionPolicy()
POLICY = Policy()


def sig(t: float, target: float, weight: float = 0.5, cause: str = "x") -> Signal:
    return Signal(t, 0, f"r{t}", target, weight, cause)


def fresh() -> CurveState:
    return CurveState(None, 70.0, False, [], [])


def test_a_signal_moves_the_score_its_weight_of_the_way() -> None:
    result = run_curve(fresh(), [sig(0, 0.0, 0.5)], PP, 70.0, reset_after=1e9)
    assert result.state.score == 35.0


def test_drift_halves_the_distance_to_the_baseline_each_half_life() -> None:
    state = fresh()
    run_curve(state, [sig(0, 30.0, 1.0)], PP, 70.0, reset_after=1e9)
    state.drift_to(PP.half_life, 70.0, PP.half_life)
    assert abs(state.score - 50.0) < 1e-9


def test_long_silence_starts_again_from_the_baseline() -> None:
    result = run_curve(fresh(), [sig(0, 0.0, 1.0), sig(10 * DAY, 100.0, 0.5)], PP, 70.0,
                       reset_after=5 * DAY)
    assert result.state.score == 85.0
    assert result.state.at_risk is False


def test_at_risk_enters_below_threshold_and_leaves_with_hysteresis() -> None:
    state = fresh()
    run_curve(state, [sig(0, 30.0, 1.0)], PP, 70.0, reset_after=1e9)
    assert state.at_risk is True  # 30 < 40
    run_curve(state, [sig(8 * DAY, 45.0, 1.0)], PP, 70.0, reset_after=1e9)
    assert state.at_risk is True  # 45 is above 40 but below the recovery level 50
    run_curve(state, [sig(9 * DAY, 60.0, 1.0)], PP, 70.0, reset_after=1e9)
    assert state.at_risk is False


def test_a_sharp_drop_puts_a_customer_at_risk_even_above_the_threshold() -> None:
    state = fresh()
    run_curve(state, [sig(0, 95.0, 1.0), sig(DAY, 65.0, 1.0)], PP, 70.0, reset_after=1e9)
    assert state.score == 65.0
    assert state.at_risk is True  # fell 30 points within 7 days


def test_contact_signals() -> None:
    assert contact_signal(PP, "abandoned", 0, 0)[2] == "abandoned"
    good = contact_signal(PP, "handled", 20, 0)
    slow = contact_signal(PP, "handled", 600, 0)
    assert good[0] > slow[0]
    assert slow[2] == "long_wait"


def test_alerts_are_emitted_once_on_entering_and_once_on_leaving() -> None:
    state = new_state(call("a", 0))
    alerts = []
    events = [call("a", 0), survey("a", 1, csat=1, nps=0, resolved=False),
              survey("a", 2, csat=1, nps=0, resolved=False, event_id="s2")]
    for i, event in enumerate(events):
        state, settled, _ = fold(state, event, ts(i + 1), POLICY)
        alerts += settled.alerts
    assert [a.alert for a in alerts] == ["at_risk_entered"]
    assert alerts[0].score < 40
    assert "survey_csat" in alerts[0].causes
    apply_event(state, survey("a", 100, csat=5, nps=10, resolved=True, event_id="s3"))
    apply_event(state, survey("a", 101, csat=5, nps=10, resolved=True, event_id="s4"))
    left = settle(state, ts(102), POLICY).alerts
    assert [(a.alert, a.version) for a in left] == [("at_risk_left", 2)]
    assert settle(state, ts(103), POLICY).alerts == []


def test_segment_baseline() -> None:
    policy = Policy(perception=PerceptionPolicy(segment_baselines={"gold": 80.0}))
    _state, settled, _ = fold(None, call("a", 0, segment="gold", wait=10), ts(1), policy)
    view = settled.updates[0].view
    assert view["perception"]["before"] == 80.0


def test_perception_band_is_counted_once_and_released_when_forgotten() -> None:
    state, settled, _ = fold(None, call("a", 0, wait=10), ts(1), POLICY)
    assert settled.band_change == (None, 7)  # 70 baseline, a good contact: 72.25
    again = settle(state, ts(2), POLICY)
    assert again.band_change is None
    gone = settle(state, ts(24 * 60), POLICY)
    assert gone.idle is True  # every record dropped: the band no longer counts them
    assert gone.band_change == (7, None)


# -- the four rules of docs/perception.md, with its worked examples ----------------------------
# Expected numbers come from the documented formulas, not from the service's code.

BASE, HALF_LIFE_DAYS = 70.0, 14.0


def toward(score: float, target: float, weight: float) -> float:
    """A signal: the score moves `weight` of the way to `target`."""
    return score + weight * (target - score)


def drifted(score: float, days: float) -> float:
    """The score `days` later with no signal: the distance to the baseline halves every 14 d."""
    return BASE + (score - BASE) * 0.5 ** (days / HALF_LIFE_DAYS)


def test_rule_1_the_curve_starts_again_only_when_a_signal_ends_a_long_silence() -> None:
    state, out, _ = fold(None, call("a", 0, outcome="abandoned"), ts(0), POLICY)
    after_a = toward(BASE, 15, 0.25)
    assert out.updates[0].view["perception"] == {"before": BASE, "after": after_a}  # 56.25
    # Read 28 days later (silence > W + L = 14 days): still drifting, not back at 70.
    read = customer_summary(state, ts(28 * 24), POLICY)["perception"]
    assert read["score"] == round(drifted(after_a, 28), 2) == 66.56
    # The next signal ends the silence: the curve starts from the baseline before it applies.
    apply_event(state, call("b", 28 * 24, outcome="abandoned"))
    view = settle(state, ts(28 * 24), POLICY).updates[0].view
    assert view["perception"] == {"before": BASE, "after": toward(BASE, 15, 0.25)}
    assert toward(drifted(after_a, 28), 15, 0.25) != view["perception"]["after"]  # 53.67
    # A silence of exactly W + L is not longer than it: no new start.
    state, _, _ = fold(None, call("a", 0, outcome="abandoned"), ts(0), POLICY)
    apply_event(state, call("b", 14 * 24, outcome="abandoned"))
    view = settle(state, ts(14 * 24), POLICY).updates[0].view
    assert view["perception"]["before"] == round(drifted(after_a, 14), 2)  # 63.125


def test_rule_2_now_is_the_watermark_and_it_decides_whether_resolved_happened() -> None:
    state, out, _ = fold(None, call("a", 0, wait=30), ts(0), POLICY)
    after_contact = toward(BASE, 85, 0.15)  # 72.25
    assert out.updates[0].view["perception"]["after"] == after_contact
    # At a watermark of day 6 the window (W = 7 days) is open: no "resolved" signal yet.
    day6 = customer_summary(state, ts(6 * 24), POLICY)
    assert day6["watermark"] == "2026-03-08T00:00:00.000Z"
    assert day6["perception"]["score"] == round(drifted(after_contact, 6), 2)  # 71.67
    assert day6["recent_contacts"][0]["resolution"] == "pending"
    # At exactly end + W still pending (the watermark must pass it).
    day7 = customer_summary(state, ts(7 * 24), POLICY)
    assert day7["recent_contacts"][0]["resolution"] == "pending"
    # At day 14: resolved, its signal placed at end + W (day 7), then drifted to day 14.
    day14 = customer_summary(state, ts(14 * 24), POLICY)
    assert day14["recent_contacts"][0]["resolution"] == "resolved"
    resolved = toward(drifted(after_contact, 7), 90, 0.20)  # 75.27 at day 7
    assert day14["perception"]["score"] == round(drifted(resolved, 7), 2) == 73.73
    assert [(p["at"], p["cause"]) for p in day14["perception"]["points"]][-1] == (
        "2026-03-09T00:00:00.000Z", "resolved")


def test_rule_3_at_risk_is_judged_at_each_signal_and_again_at_read_time() -> None:
    state, out, _ = fold(None, survey("a", 0, csat=1), ts(0), POLICY)
    after = toward(BASE, 0, 0.5)  # 35
    assert [(a.alert, a.score, a.drop) for a in out.alerts] == [
        ("at_risk_entered", after, BASE - after)]
    day7 = customer_summary(state, ts(7 * 24), POLICY)["perception"]
    assert day7["score"] == round(drifted(after, 7), 2) == 45.25
    assert day7["at_risk"] is True  # above 40, below 50: stays (hysteresis)
    day14 = customer_summary(state, ts(14 * 24), POLICY)["perception"]
    assert day14["score"] == drifted(after, 14) == 52.5
    assert day14["at_risk"] is False  # the leave rule, applied when read
    # Nothing was published meanwhile; the next settle publishes the leave, at its watermark.
    assert state.alerted_at_risk is True
    left = settle(state, ts(14 * 24), POLICY).alerts
    assert [(a.alert, a.score, a.drop, a.at) for a in left] == [
        ("at_risk_left", 52.5, 0.0, ts(14 * 24))]


def test_rule_4_the_drop_counts_the_score_just_before_each_signal() -> None:
    state, out, _ = fold(None, survey("a", 0, ces=7, nps=3), ts(0), POLICY)
    after_ces = toward(BASE, 0, 0.25)  # 52.5
    after_nps = toward(after_ces, 30, 0.35)  # 44.625: not below 40
    assert after_nps >= 40
    assert BASE - after_nps >= 25 > after_ces - after_nps
    assert [(a.alert, a.score, a.drop) for a in out.alerts] == [
        ("at_risk_entered", round(after_nps, 2), round(BASE - after_nps, 2))]
    assert customer_summary(state, ts(0), POLICY)["perception"]["at_risk"] is True
    # Day 6: drifted back above 50, but 70 (before the survey) is still within 7 days: the
    # drop is over half the threshold and the customer stays at risk.
    day6 = customer_summary(state, ts(6 * 24), POLICY)["perception"]
    assert day6["score"] == round(drifted(after_nps, 6), 2) >= 50
    assert BASE - drifted(after_nps, 6) >= 25 / 2
    assert day6["at_risk"] is True
    # An hour past day 7 the score before the survey left the period: no drop, so it leaves.
    later = customer_summary(state, ts(7 * 24 + 1), POLICY)["perception"]
    assert later["score"] >= 50
    assert later["at_risk"] is False
