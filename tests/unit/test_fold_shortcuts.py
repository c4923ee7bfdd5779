"""The fold's shortcuts give what the plain computation gives.

The at-risk drop rule keeps only the points that can still be the peak of its period, and
settle skips a contact whose inputs did not change: both are checked here against the plain
way, and against states stored before the shortcuts existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.engine import apply_event, new_state, settle
from service.domain.perception import CurveState, CurveTrack, Signal, run_curve, start_state
from service.domain.policy import DAY, PerceptionPolicy, Policy
from service.domain.records import CustomerState, PerceptionSnapshot
from service.domain.settle import _digest
from tests.unit.builders import call, survey, transfer, ts

PP = PerceptionPolicy()


@dataclass
class Plain:
    """The curve computed the plain way: every (time, score) point kept, the peak searched."""

    score: float
    at_risk: bool = False
    t: float | None = None

    def run(self, signals: list[Signal], baseline: float) -> None:
        recent: list[tuple[float, float]] = []
        for sig in signals:
            if self.t is not None and sig.t > self.t:
                self.score = baseline + (self.score - baseline) * 0.5 ** (
                    (sig.t - self.t) / PP.half_life)
            self.t = sig.t if self.t is None else max(self.t, sig.t)
            before = self.score
            recent.append((sig.t, before))
            self.score = before + sig.weight * (sig.target - before)
            recent.append((sig.t, self.score))
            horizon = self.t - PP.at_risk_drop_period
            peak = max((s for t, s in recent if t >= horizon), default=self.score)
            drop = max(0.0, peak - self.score)
            if not self.at_risk:
                self.at_risk = self.score < PP.at_risk_below or drop >= PP.at_risk_drop
            elif self.score >= PP.at_risk_recover_at and drop < PP.at_risk_drop / 2:
                self.at_risk = False
            if sig.cause == "complaint":  # CX_AT_RISK_ON_COMPLAINT: at risk whatever the score
                self.at_risk = True


signal_lists = st.lists(
    st.tuples(st.integers(0, 40), st.floats(0, 100), st.sampled_from([0.15, 0.3, 0.5]),
              st.sampled_from(["x", "x", "x", "complaint"])),
    min_size=1, max_size=40,
).map(lambda specs: [Signal(h * DAY / 4, 0, f"r{i}", target, weight, cause)
                     for i, (h, target, weight, cause) in enumerate(sorted(specs))])


@settings(max_examples=200, deadline=None)
@given(signal_lists)
def test_the_drop_rule_finds_the_peak_the_plain_way_does(signals: list[Signal]) -> None:
    plain = Plain(70.0)
    plain.run(signals, 70.0)
    state = CurveState(None, 70.0, False, [], [])
    run_curve(state, signals, PP, 70.0, reset_after=1e12)
    assert abs(state.score - plain.score) < 1e-9
    assert state.at_risk == plain.at_risk
    assert [s for _, s in state.recent] == sorted((s for _, s in state.recent), reverse=True)


def test_a_stored_snapshot_with_every_point_is_reduced_to_the_possible_peaks() -> None:
    points = [(0.0, 60.0), (1.0, 80.0), (2.0, 50.0), (3.0, 55.0), (4.0, 40.0)]
    stored = CustomerState(customer_id="cust-1").to_dict()
    del stored["v"]  # as written before the state format had a version
    stored["p"] = [4.0, 40.0, True, [], [list(p) for p in points], 4.0]
    snapshot = CustomerState.from_dict(stored).snapshot
    state = start_state(snapshot, 70.0)
    assert state.recent == [(1.0, 80.0), (3.0, 55.0), (4.0, 40.0)]
    assert state.drop(PP.at_risk_drop_period) == 40.0


def _history(views: dict[str, dict[str, Any]] | None = None) -> CustomerState:
    state = new_state(call("c1", 0))
    for event in (call("c1", 0), transfer("c1", 0.5), call("c2", 30), survey("c2", 31, csat=2,
                                                                          resolved=False)):
        apply_event(state, event)
    for update in settle(state, ts(31), Policy()).updates:
        if views is not None:
            views[update.contact_id] = update.view
    return state


def test_settling_again_with_nothing_changed_publishes_nothing() -> None:
    state = _history()
    again = settle(state, ts(31), Policy())
    assert again.updates == []
    assert again.counter_deltas == {}


def test_a_state_stored_without_view_checksums_settles_to_the_same_versions() -> None:
    views: dict[str, dict[str, Any]] = {}
    state = _history(views)
    stored = state.to_dict()
    del stored["v"]  # as written before the state format had a version
    for cid, emitted in stored["e"].items():
        # As written before the checksum existed: with the digest of the view it published.
        view = {k: v for k, v in views[cid].items() if k != "version"}
        emitted[1] = _digest(view)
        del emitted[4:]
    old = CustomerState.from_dict(stored)
    assert all(e.basis is None for e in old.emitted.values())
    again = settle(old, ts(31), Policy())
    assert again.updates == []
    assert again.counter_deltas == {}
    # The checksums are filled in when the state is stored again.
    assert all(e[4] is not None for e in old.to_dict()["e"].values())


def test_a_change_of_verdict_still_publishes_a_new_version() -> None:
    state = _history()
    before = {cid: e.version for cid, e in state.emitted.items()}
    # A call within c2's repeat window: c2 gains the reason repeat_contact, c3 is new.
    apply_event(state, call("c3", 40))
    out = settle(state, ts(40), Policy())
    changed = {u.contact_id: u.version for u in out.updates}
    assert changed["c3"] == 1
    assert changed["c2"] == before["c2"] + 1
    assert out.counter_deltas


curve_signals = st.lists(
    st.tuples(st.integers(0, 40), st.floats(0, 100), st.sampled_from([0.15, 0.3, 0.5]),
              st.booleans()),
    min_size=1, max_size=40,
).map(lambda specs: [Signal(h * DAY / 4, 0, f"r{i}", target, weight,
                            "complaint" if i % 5 == 4 else "x" if i % 2 else "y",
                            f"at{h}" if of_contact else None)
                     for i, (h, target, weight, of_contact) in enumerate(sorted(specs))])


@settings(max_examples=200, deadline=None)
@given(curve_signals, st.randoms(use_true_random=False))
def test_the_kept_curve_equals_a_run_of_the_whole_curve(signals: list[Signal], rnd: Any
                                                         ) -> None:
    """CurveTrack repeats run_curve's steps: signals added in any order, with runs in between
    and a signal added then removed, end where one run over all of them ends."""
    reset_after = 3 * DAY
    in_order = sorted(signals, key=Signal.key)  # as perception_signals gives them
    expected = run_curve(start_state(PerceptionSnapshot(), 70.0), in_order, PP, 70.0,
                         reset_after)
    track = CurveTrack(start_state(PerceptionSnapshot(), 70.0), 70.0, None, PP, reset_after)
    order = list(signals)
    rnd.shuffle(order)
    stray = Signal(rnd.choice(signals).t, 1, "stray", 0.0, 0.5, "z", None)
    for i, sig in enumerate(order):
        track.add(sig)
        if i == len(order) // 2:
            track.add(stray)
        if i % 3 == 0:
            track.run()
    track.remove(stray)
    track.run()
    assert expected.state.t is not None
    now = track.now(expected.state.t)
    assert (now.score, now.at_risk, now.t) == (expected.state.score, expected.state.at_risk,
                                               expected.state.t)
    assert track.by_contact == expected.by_contact
    assert track.causes() == expected.causes
