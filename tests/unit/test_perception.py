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
    assert gone.forget is True
    assert gone.band_change == (7, None)
