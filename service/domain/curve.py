"""A customer's perception curve from its state: the signals its records and verdicts give,
and the curve they draw from the snapshot on (perception.py draws it)."""

from __future__ import annotations

from bisect import bisect_left

from service.domain.counters import STATUS_RESOLVED
from service.domain.perception import (
    RANK_CONTACT,
    RANK_REPEAT,
    RANK_RESOLUTION,
    RANK_SURVEY,
    RANK_TRANSFER,
    REPEAT,
    RESOLVED,
    TRANSFER,
    CurveResult,
    Signal,
    contact_signal,
    evaluate_at_risk,
    run_curve,
    start_state,
    survey_signals,
    voice_signals,
)
from service.domain.policy import Policy
from service.domain.records import (
    BY_ORDER,
    ContactRecord,
    CustomerState,
    SurveyRecord,
    TransferRecord,
)
from service.domain.verdicts import Verdict


def signals_of_contact(c: ContactRecord, v: Verdict, policy: Policy) -> tuple[Signal, ...]:
    """A contact's perception signals: its own experience, the repeat it is, its resolution."""
    cid = c.contact_id
    target, weight, cause = contact_signal(policy.perception, c.outcome, c.wait, c.hold)
    out = [Signal(c.t, RANK_CONTACT, cid, target, weight, cause, cid)]
    if c.complaint or c.sentiment:  # what speech and text analytics heard
        out.extend(Signal(c.t, RANK_CONTACT, cid, *spec, cid)
                   for spec in voice_signals(c.sentiment, c.complaint))
    if v.is_repeat:
        out.append(Signal(c.t, RANK_REPEAT, cid, REPEAT[0], REPEAT[1], REPEAT[2], cid))
    if v.status == STATUS_RESOLVED:
        out.append(Signal(c.t + policy.for_queue(c.queue).repeat_window, RANK_RESOLUTION, cid,
                          RESOLVED[0], RESOLVED[1], RESOLVED[2]))
    return tuple(out)


def record_signals(record: TransferRecord | SurveyRecord) -> list[Signal]:
    """The perception signals of a transfer or a survey answer."""
    if isinstance(record, TransferRecord):
        return [Signal(record.t, RANK_TRANSFER, record.event_id, *TRANSFER)]
    return [Signal(record.t, RANK_SURVEY, record.event_id, *spec)
            for spec in survey_signals(record.csat, record.nps, record.ces, record.resolved)]


def perception_signals(
    state: CustomerState, verdicts: dict[str, Verdict], watermark: float, policy: Policy
) -> list[Signal]:
    """The customer's signals from the snapshot time on, in event-time order."""
    out: list[Signal] = []
    for c in state.contacts.values():
        out.extend(signals_of_contact(c, verdicts[c.contact_id], policy))
    for tr in state.transfers:
        out.extend(record_signals(tr))
    for sv in state.surveys:
        out.extend(record_signals(sv))
    since = state.snapshot.t
    if since is not None:
        out = [sig for sig in out if sig.t >= since]
    out.sort(key=Signal.key)
    return out


def _signal_time(signal: Signal) -> float:
    return signal.t


def baseline_of(state: CustomerState, policy: Policy) -> float:
    """The baseline of the segment of the customer's latest contact."""
    latest = max(state.contacts.values(), key=BY_ORDER, default=None)
    if latest is not None:
        return policy.perception.baseline_for(latest.segment)
    return policy.perception.baseline_for(state.history.segment if state.history else None)


def perception_curve(
    state: CustomerState, verdicts: dict[str, Verdict], watermark: float, policy: Policy,
    *, until: float | None = None, signals: list[Signal] | None = None,
) -> CurveResult:
    """The curve from the snapshot to the watermark (or up to `until`, excluded). `signals`,
    when given, are `perception_signals` of this state and verdicts, already computed."""
    if signals is None:
        signals = perception_signals(state, verdicts, watermark, policy)
    if until is not None:
        signals = signals[:bisect_left(signals, until, key=_signal_time)]
    baseline = baseline_of(state, policy)
    result = run_curve(start_state(state.snapshot, baseline), signals, policy.perception,
                       baseline, reset_after=policy.allowed_lateness + policy.max_window)
    end = until if until is not None else watermark
    if result.state.t is not None and end > result.state.t:
        result.state.drift_to(end, baseline, policy.perception.half_life)
        if until is None:  # a snapshot only drifts: at-risk is judged at signals and at "now"
            evaluate_at_risk(result.state, policy.perception)
    return result
