"""The perception curve: how a customer's satisfaction evolves across contacts.

A score from 0 to 100 starts at the baseline (per segment when set). Each experience is a
signal with a target and a weight: the score moves that share of the way toward the target.
Between signals the score drifts back toward the baseline with a half-life. Surveys (the
customer's own words) weigh more than implicit signals (waits, abandons, transfers, repeats,
resolutions). The curve is a function of the signals in event-time order only, so the order
in which events arrive cannot change it. docs/perception.md gives the reasons for each number.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import NamedTuple

from service.domain.policy import PerceptionPolicy
from service.domain.records import PerceptionSnapshot

# Rank orders signals that share a time: the contact, its transfers, the repeat it revealed,
# surveys, then resolutions.
RANK_CONTACT, RANK_TRANSFER, RANK_REPEAT, RANK_SURVEY, RANK_RESOLUTION = range(5)


class Signal(NamedTuple):
    t: float
    rank: int
    ref: str
    target: float
    weight: float
    cause: str
    contact_id: str | None = None

    def key(self) -> tuple[float, int, str, str]:
        return (self.t, self.rank, self.ref, self.cause)


def contact_signal(
    policy: PerceptionPolicy, outcome: str, wait: float, hold: float
) -> tuple[float, float, str]:
    """(target, weight, cause) of a contact's own experience."""
    if outcome == "abandoned":
        return 15.0, 0.25, "abandoned"
    if outcome == "self_service":
        return 65.0, 0.05, "self_service"
    target = policy.wait_target
    over = max(0.0, wait - target) / (4 * target)
    value = 85.0 - 70.0 * min(over, 1.0) - min(25.0, hold / 12.0)
    cause = "long_wait" if wait > 2 * target else ("long_hold" if hold > 300 else "handled")
    return max(10.0, value), 0.15, cause


def survey_signals(
    csat: int | None, nps: int | None, ces: int | None, resolved: bool | None
) -> list[tuple[float, float, str]]:
    out: list[tuple[float, float, str]] = []
    if csat is not None:
        out.append(((csat - 1) * 25.0, 0.5, "survey_csat"))
    if nps is not None:
        out.append((nps * 10.0, 0.35, "survey_nps"))
    if ces is not None:
        out.append(((7 - ces) / 6 * 100.0, 0.25, "survey_ces"))
    if resolved is not None:
        out.append((100.0 if resolved else 0.0, 0.3,
                    "survey_resolved" if resolved else "survey_unresolved"))
    return out


def voice_signals(sentiment: float | None, complaint: bool | None
                  ) -> list[tuple[float, float, str]]:
    """(target, weight, cause) of what speech and text analytics heard in a contact: a
    complaint weighs as a survey saying not resolved; a sentiment moves the score toward 0 or
    100 by a share proportional to its strength (at most 0.2 of the way)."""
    out: list[tuple[float, float, str]] = []
    if complaint:
        out.append((0.0, 0.3, COMPLAINT))
    if sentiment:
        out.append((100.0 if sentiment > 0 else 0.0, 0.2 * abs(sentiment),
                    "positive_sentiment" if sentiment > 0 else "negative_sentiment"))
    return out


COMPLAINT = "complaint"
TRANSFER = (30.0, 0.15, "transfer")
REPEAT = (15.0, 0.3, "repeat_contact")
RESOLVED = (90.0, 0.2, "resolved")


@dataclass
class CurveState:
    """The running state of the curve while signals are applied in order."""

    t: float | None
    score: float
    at_risk: bool
    points: list[tuple[float, float, str]]
    recent: list[tuple[float, float]]  # (time, score) within the drop period, for the drop rule
    last_signal: float | None = None

    def drift_to(self, t: float, baseline: float, half_life: float) -> None:
        if self.t is not None and t > self.t:
            self.score = baseline + (self.score - baseline) * 0.5 ** ((t - self.t) / half_life)
        self.t = t if self.t is None else max(self.t, t)

    def drop(self, period: float) -> float:
        if self.t is None:
            return 0.0
        horizon = self.t - period
        peak = self.score
        for t, s in self.recent:  # decreasing scores: the first in the period is the peak
            if t >= horizon:
                peak = s
                break
        return max(0.0, peak - self.score)


# Not frozen, never changed once built: see Counted (counters.py).
@dataclass(slots=True)
class ContactPerception:
    before: float
    after: float


@dataclass
class CurveResult:
    state: CurveState
    by_contact: dict[str, ContactPerception]
    causes: list[str]


def start_state(snapshot: PerceptionSnapshot, baseline: float) -> CurveState:
    if snapshot.t is None or snapshot.score is None:
        return CurveState(None, baseline, False, [], [])
    return CurveState(snapshot.t, snapshot.score, snapshot.at_risk, list(snapshot.points),
                      list(snapshot.recent), snapshot.last_signal)


class CurveRules(NamedTuple):
    """The numbers one step of the curve needs, read once per run."""

    baseline: float
    reset_after: float
    half_life: float
    period: float  # of the drop rule
    below: float
    recover_at: float
    drop_limit: float
    on_complaint: bool = True  # a complaint puts the customer at risk by itself

    @staticmethod
    def of(policy: PerceptionPolicy, baseline: float, reset_after: float) -> CurveRules:
        return CurveRules(baseline, reset_after, policy.half_life, policy.at_risk_drop_period,
                          policy.at_risk_below, policy.at_risk_recover_at, policy.at_risk_drop,
                          policy.at_risk_on_complaint)


def judge_at_risk(at_risk: bool, score: float, drop: float, below: float, recover_at: float,
                  drop_limit: float) -> bool:
    """At-risk with hysteresis: entered below `below` or on a drop of `drop_limit` within the
    period, left only at `recover_at` with the drop under half the limit."""
    if not at_risk:
        return score < below or drop >= drop_limit
    return not (score >= recover_at and drop < drop_limit / 2)


def curve_step(sig: Signal, t_now: float | None, score: float, at_risk: bool,
               last: float | None, recent: list[tuple[float, float]], rules: CurveRules
               ) -> tuple[float, float, bool, float, float, bool]:
    """One signal on the curve: restart after a long silence, drift to the signal's time, move
    the score toward its target, keep `recent` (updated in place) to the drop period, judge
    at-risk. (t_now, score, at_risk, score before the signal, change, whether it restarted)."""
    st = sig.t
    restarted = last is not None and st - last > rules.reset_after
    if restarted:
        t_now, score, at_risk = None, rules.baseline, False
        recent.clear()
    if t_now is None:
        t_now = st
    elif st > t_now:
        baseline = rules.baseline
        score = baseline + (score - baseline) * 0.5 ** ((st - t_now) / rules.half_life)
        t_now = st
    before = score
    while recent and recent[-1][1] <= before:
        recent.pop()
    recent.append((st, before))
    change = sig.weight * (sig.target - before)
    score = before + change
    while recent and recent[-1][1] <= score:
        recent.pop()
    recent.append((st, score))
    horizon = t_now - rules.period
    if recent[0][0] < horizon:
        recent[:] = [(t, s) for (t, s) in recent if t >= horizon]
    # Every entry left is within the period and the scores decrease: the first is the peak.
    peak = recent[0][1]
    drop = peak - score if peak > score else 0.0
    at_risk = judge_at_risk(at_risk, score, drop, rules.below, rules.recover_at,
                            rules.drop_limit) or (rules.on_complaint and sig.cause == COMPLAINT)
    return t_now, score, at_risk, before, change, restarted


def run_curve(
    state: CurveState,
    signals: list[Signal],
    policy: PerceptionPolicy,
    baseline: float,
    reset_after: float,
) -> CurveResult:
    """Apply signals (sorted by key) to the state; track at-risk with hysteresis.

    After a silence longer than `reset_after` the curve starts again from the baseline: the
    service forgets customers idle that long, and the curve must not depend on whether it did.
    """
    by_contact: dict[str, ContactPerception] = {}
    causes: list[str] = []
    rules = CurveRules.of(policy, baseline, reset_after)
    keep_points = policy.curve_points
    t_now, score, at_risk, last = state.t, state.score, state.at_risk, state.last_signal
    points, recent = state.points, state.recent
    for sig in signals:
        t_now, score, at_risk, before, change, reset = curve_step(
            sig, t_now, score, at_risk, last, recent, rules)
        last = sig.t
        if reset:
            points.clear()
            causes.clear()
        points.append((last, score, sig.cause))
        if len(points) > keep_points:
            del points[: len(points) - keep_points]
        if change < 0:
            causes.append(sig.cause)
            del causes[:-5]
        if sig.contact_id is not None:
            seen = by_contact.get(sig.contact_id)
            by_contact[sig.contact_id] = ContactPerception(
                seen.before if seen else before, score
            )
    state.t, state.score, state.at_risk, state.last_signal = t_now, score, at_risk, last
    return CurveResult(state, by_contact, causes)


def evaluate_at_risk(state: CurveState, policy: PerceptionPolicy) -> None:
    """Judge at-risk at the state's time (between signals: after a drift)."""
    state.at_risk = judge_at_risk(state.at_risk, state.score,
                                  state.drop(policy.at_risk_drop_period), policy.at_risk_below,
                                  policy.at_risk_recover_at, policy.at_risk_drop)


@dataclass(slots=True)
class _Point:
    """The curve right after one signal: enough to resume from it and to read what it did."""

    t_now: float
    score: float
    at_risk: bool
    last: float
    recent: tuple[tuple[float, float], ...]
    before: float
    falls: bool  # the signal moved the score down (its cause is a candidate alert cause)
    reset: int  # index of the signal that began this stretch of the curve, -1: the snapshot


class CurveTrack:
    """A customer's curve kept between settles: the signals in order and the curve right
    after each, so a change at signal i runs the curve again from i only.

    The curve after signal i is exactly what `run_curve` computes (the same steps on the same
    numbers), so keeping it changes no result, only the work.
    """

    __slots__ = (
        "baseline",
        "by_contact",
        "keys",
        "lost",
        "points",
        "policy",
        "reset_after",
        "signals",
        "since",
        "start",
    )

    def __init__(self, start: CurveState, baseline: float, since: float | None,
                 policy: PerceptionPolicy, reset_after: float) -> None:
        self.start = start
        self.baseline = baseline
        self.since = since
        self.policy = policy
        self.reset_after = reset_after
        self.keys: list[tuple[float, int, str, str]] = []
        self.signals: list[Signal] = []
        self.points: list[_Point] = []  # valid for signals[: len(points)]
        self.by_contact: dict[str, ContactPerception] = {}
        self.lost: set[str] = set()  # contacts that lost a signal since the last run

    def add(self, sig: Signal) -> None:
        if self.since is not None and sig.t < self.since:
            return
        key = sig.key()
        i = bisect_left(self.keys, key)
        self.keys.insert(i, key)
        self.signals.insert(i, sig)
        if i < len(self.points):
            del self.points[i:]

    def remove(self, sig: Signal) -> None:
        if self.since is not None and sig.t < self.since:
            return
        key = sig.key()
        i = bisect_left(self.keys, key)
        if i < len(self.keys) and self.keys[i] == key:
            del self.keys[i]
            del self.signals[i]
            if i < len(self.points):
                del self.points[i:]
            if sig.contact_id is not None:
                self.lost.add(sig.contact_id)

    def run(self) -> set[str]:
        """Bring the curve up to date; the contacts whose (before, after) changed."""
        signals, points = self.signals, self.points
        n = len(signals)
        i = len(points)
        # A contact's signals share one time: start at the first signal of that time, so no
        # contact is split across the part kept and the part run again.
        while 0 < i < n and signals[i - 1].t == signals[i].t:
            i -= 1
        del points[i:]
        if i == n and not self.lost:
            return set()
        rules = CurveRules.of(self.policy, self.baseline, self.reset_after)
        if i == 0:
            begin = self.start
            t_now: float | None = begin.t
            score, at_risk, last = begin.score, begin.at_risk, begin.last_signal
            recent = list(begin.recent)
            reset = -1
        else:
            p = points[i - 1]
            t_now, score, at_risk, last = p.t_now, p.score, p.at_risk, p.last
            recent = list(p.recent)
            reset = p.reset
        # The same steps as run_curve, keeping the curve after every signal.
        for j in range(i, n):
            sig = signals[j]
            t_now, score, at_risk, before, change, restarted = curve_step(
                sig, t_now, score, at_risk, last, recent, rules)
            last = sig.t
            if restarted:
                reset = j
            points.append(_Point(t_now, score, at_risk, last, tuple(recent), before, change < 0,
                                 reset))
        changed = set(self.lost)
        self.lost.clear()
        for lost in changed:
            self.by_contact.pop(lost, None)
        by_contact = self.by_contact
        fresh: set[str] = set()
        for j in range(i, n):
            contact_id = signals[j].contact_id
            if contact_id is None:
                continue
            p = points[j]
            if contact_id in fresh:
                by_contact[contact_id] = ContactPerception(by_contact[contact_id].before, p.score)
            else:
                fresh.add(contact_id)
                by_contact[contact_id] = ContactPerception(p.before, p.score)
        return changed | fresh

    def now(self, until: float) -> CurveState:
        """The curve's state at `until` (the watermark): drifted there and at-risk judged, as
        `perception_curve` does. Its points are left empty: settling never reads them (the
        stored snapshot and the API's curve come from `perception_curve`)."""
        if not self.points:
            s = self.start
            state = CurveState(s.t, s.score, s.at_risk, [], list(s.recent), s.last_signal)
        else:
            p = self.points[-1]
            state = CurveState(p.t_now, p.score, p.at_risk, [], list(p.recent), p.last)
        if state.t is not None and until > state.t:
            state.drift_to(until, self.baseline, self.policy.half_life)
            evaluate_at_risk(state, self.policy)
        return state

    def causes(self) -> list[str]:
        """The causes of the last (up to 5) falls of the score since the curve last began."""
        points, n = self.points, len(self.points)
        first = points[-1].reset if n and points[-1].reset >= 0 else 0
        out: list[str] = []
        for j in range(n - 1, first - 1, -1):
            if points[j].falls:
                out.append(self.signals[j].cause)
                if len(out) == 5:
                    break
        out.reverse()
        return out
