"""The fold at the heart of cx-stream: (customer state, event) -> (new state, outputs).

`apply_event` adds an event to the customer's state (or recognises its event_id as seen).
`settle` derives every verdict from the whole recent state at the current watermark, compares
it with what was last published, and returns what changed: counter deltas (old contribution
retracted, new one added), new versions of enriched contacts, and at-risk alerts. Because
verdicts are recomputed from the set of events, not patched event by event, any arrival order
of the same events gives the same verdicts, counters and perception curve. `fold` is the two
in one step.

Bounds (W = longest repeat window, L = allowed lateness, H = W + L the join horizon): events
older than `watermark - L` are too late. A contact more than `2L + W` behind the watermark can
no longer change (it is sealed); perception signals older than `watermark - 2L` are folded into
the snapshot; records are dropped once nothing live can depend on them.
"""

from __future__ import annotations

import hashlib
import zlib
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from service.domain.counters import (
    STATUS_NONE,
    STATUS_PENDING,
    STATUS_RESOLVED,
    STATUS_UNRESOLVED,
    Counted,
    add_delta,
    hour_of,
)
from service.domain.events import CallEnded, ContactEvent, SurveyAnswered, Transfer
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
)
from service.domain.policy import Policy
from service.domain.records import (
    ContactRecord,
    CustomerState,
    Emitted,
    PerceptionSnapshot,
    SurveyRecord,
    TransferRecord,
)

REPEAT_CONTACT = "repeat_contact"
TRANSFERRED = "transferred"
SURVEY_UNRESOLVED = "survey_unresolved"
_STATUS_NAMES = {STATUS_PENDING: "pending", STATUS_RESOLVED: "resolved",
                 STATUS_UNRESOLVED: "unresolved"}


def state_key(event: ContactEvent) -> str:
    """Where an event's state lives: its customer, or its contact for an unidentified caller."""
    customer = event.header.customer_id
    return f"c:{customer}" if customer is not None else f"u:{event.header.contact_id}"


def new_state(event: ContactEvent) -> CustomerState:
    return CustomerState(customer_id=event.header.customer_id)


# -- applying events ---------------------------------------------------------------------------


def apply_event(state: CustomerState, event: ContactEvent) -> bool:
    """Add the event to the state; False when its event_id was already applied."""
    header = event.header
    if state.seen(header.event_id):
        return False
    if isinstance(event, CallEnded):
        record = ContactRecord.of(event)
        current = state.contacts.get(record.contact_id)
        if current is None:
            state.contacts[record.contact_id] = record
        elif (record.t, record.event_id) > (current.t, current.event_id):
            # A second call-ended for one contact: the later one (by time, then id) stands.
            state.superseded.append((current.event_id, current.t))
            state.contacts[record.contact_id] = record
        else:
            state.superseded.append((record.event_id, record.t))
    elif isinstance(event, Transfer):
        state.transfers.append(TransferRecord.of(event))
    elif isinstance(event, SurveyAnswered):
        state.surveys.append(SurveyRecord.of(event))
    return True


def is_too_late(event: ContactEvent, watermark: float | None, policy: Policy) -> bool:
    if watermark is None:
        return False
    return event.header.occurred_at.timestamp() < watermark - policy.allowed_lateness


# -- verdicts ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    participates: bool
    is_repeat: bool
    repeat_of: str | None
    transfers: int
    status: int
    reasons: tuple[str, ...]
    surveys: tuple[SurveyRecord, ...]

    @property
    def resolution(self) -> str | None:
        return _STATUS_NAMES.get(self.status)


_ORDER = attrgetter("t", "contact_id")  # ContactRecord.order, as a C-level key


def _participates(c: ContactRecord, identified: bool) -> bool:
    return identified and c.outcome == "handled"


def _in_scope(p: ContactRecord, c: ContactRecord, policy: Policy) -> bool:
    rules = policy.for_queue(p.queue)
    if c.t - p.t > rules.repeat_window:
        return False
    if rules.repeat_same_reason and p.reason != c.reason:
        return False
    return not (rules.repeat_same_channel and p.channel != c.channel)


def derive_verdicts(
    state: CustomerState, watermark: float, policy: Policy
) -> dict[str, Verdict]:
    """Every contact's verdict, from the whole state (all arrival orders give the same)."""
    identified = state.customer_id is not None
    horizon = policy.join_horizon
    transfers: dict[str, int] = {}
    for tr in state.transfers:
        c = state.contacts.get(tr.contact_id)
        if c is not None and abs(tr.t - c.t) <= horizon:
            transfers[tr.contact_id] = transfers.get(tr.contact_id, 0) + 1
    surveys: dict[str, list[SurveyRecord]] = {}
    for sv in state.surveys:
        c = state.contacts.get(sv.contact_id)
        if c is not None and abs(sv.t - c.t) <= horizon:
            surveys.setdefault(sv.contact_id, []).append(sv)
    for found in surveys.values():
        found.sort(key=lambda s: (s.t, s.event_id))

    handled = sorted(
        (c for c in state.contacts.values() if identified and c.outcome == "handled"),
        key=_ORDER,
    )
    max_window = policy.max_window
    repeat_of: dict[str, str] = {}
    repeated: set[str] = set()
    for i, c in enumerate(handled):
        for j in range(i - 1, -1, -1):
            p = handled[j]
            if c.t - p.t > max_window:
                break
            if _in_scope(p, c, policy):
                repeat_of[c.contact_id] = p.contact_id
                break
        for j in range(i + 1, len(handled)):
            later = handled[j]
            if later.t - c.t > max_window:
                break
            if _in_scope(c, later, policy):
                repeated.add(c.contact_id)
                break

    verdicts: dict[str, Verdict] = {}
    for c in state.contacts.values():
        joined: tuple[SurveyRecord, ...] = tuple(surveys.get(c.contact_id, ()))
        n_transfers = transfers.get(c.contact_id, 0)
        if not _participates(c, identified):
            verdicts[c.contact_id] = Verdict(False, False, None, n_transfers, STATUS_NONE, (),
                                             joined)
            continue
        rules = policy.for_queue(c.queue)
        reasons: list[str] = []
        if c.contact_id in repeated:
            reasons.append(REPEAT_CONTACT)
        if n_transfers and rules.transfer_breaks_fcr:
            reasons.append(TRANSFERRED)
        if any(s.resolved is False for s in joined):
            reasons.append(SURVEY_UNRESOLVED)
        if reasons:
            status = STATUS_UNRESOLVED
        elif watermark > c.t + rules.repeat_window:
            status = STATUS_RESOLVED
        else:
            status = STATUS_PENDING
        verdicts[c.contact_id] = Verdict(
            True, c.contact_id in repeat_of, repeat_of.get(c.contact_id), n_transfers, status,
            tuple(reasons), joined,
        )
    return verdicts


def counted_of(c: ContactRecord, v: Verdict, identified: bool) -> Counted:
    csat = [s.csat for s in v.surveys if s.csat is not None]
    nps = [s.nps for s in v.surveys if s.nps is not None]
    ces = [s.ces for s in v.surveys if s.ces is not None]
    return Counted(
        hour=hour_of(c.t), outcome=c.outcome, queue=c.queue, channel=c.channel, agent=c.agent,
        segment=c.segment, participates=v.participates, status=v.status,
        is_repeat=v.is_repeat, transferred=v.transfers > 0, surveys=len(v.surveys),
        survey_unresolved=sum(1 for s in v.surveys if s.resolved is False),
        csat_sum=sum(csat), csat_count=len(csat),
        nps_promoters=sum(1 for n in nps if n >= 9), nps_detractors=sum(1 for n in nps if n <= 6),
        nps_count=len(nps), ces_sum=sum(ces), ces_count=len(ces),
        identified=identified,
    )


# -- perception --------------------------------------------------------------------------------


def perception_signals(
    state: CustomerState, verdicts: dict[str, Verdict], watermark: float, policy: Policy
) -> list[Signal]:
    """The customer's signals from the snapshot time on, in event-time order."""
    since = state.snapshot.t
    pp = policy.perception
    out: list[Signal] = []

    def add(t: float, rank: int, ref: str, spec: tuple[float, float, str],
            contact_id: str | None = None) -> None:
        if since is None or t >= since:
            out.append(Signal(t, rank, ref, spec[0], spec[1], spec[2], contact_id))

    for c in state.contacts.values():
        add(c.t, RANK_CONTACT, c.contact_id, contact_signal(pp, c.outcome, c.wait, c.hold),
            c.contact_id)
        v = verdicts[c.contact_id]
        if v.is_repeat:
            add(c.t, RANK_REPEAT, c.contact_id, REPEAT, c.contact_id)
        if v.status == STATUS_RESOLVED:
            add(c.t + policy.for_queue(c.queue).repeat_window, RANK_RESOLUTION, c.contact_id,
                RESOLVED)
    for tr in state.transfers:
        add(tr.t, RANK_TRANSFER, tr.event_id, TRANSFER)
    for sv in state.surveys:
        for spec in survey_signals(sv.csat, sv.nps, sv.ces, sv.resolved):
            add(sv.t, RANK_SURVEY, sv.event_id, spec)
    out.sort(key=Signal.key)
    return out


def _signal_time(signal: Signal) -> float:
    return signal.t


def _baseline(state: CustomerState, policy: Policy) -> float:
    """The baseline of the segment of the customer's latest contact."""
    latest = max(state.contacts.values(), key=ContactRecord.order, default=None)
    return policy.perception.baseline_for(latest.segment if latest else None)


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
    baseline = _baseline(state, policy)
    result = run_curve(start_state(state.snapshot, baseline), signals, policy.perception,
                       baseline, reset_after=policy.allowed_lateness + policy.max_window)
    end = until if until is not None else watermark
    if result.state.t is not None and end > result.state.t:
        result.state.drift_to(end, baseline, policy.perception.half_life)
        if until is None:  # a snapshot only drifts: at-risk is judged at signals and at "now"
            evaluate_at_risk(result.state, policy.perception)
    return result


# -- settling ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContactUpdate:
    contact_id: str
    version: int
    view: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CustomerAlert:
    customer_id: str
    alert: str
    version: int
    score: float
    drop: float
    causes: tuple[str, ...]
    at: float


@dataclass
class Settled:
    counter_deltas: dict[int, dict[str, int]] = field(default_factory=dict)
    updates: list[ContactUpdate] = field(default_factory=list)
    alerts: list[CustomerAlert] = field(default_factory=list)
    next_due: float | None = None
    forget: bool = False
    band_change: tuple[int | None, int | None] | None = None  # (old, new) perception band
    # Growth of (surveys joined, surveys, transfers joined, transfers) since the last settle
    joins: tuple[int, int, int, int] = (0, 0, 0, 0)


def rfc3339(t: float) -> str:
    """Event time as RFC 3339 in UTC, to the millisecond."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def enriched_view(
    c: ContactRecord, v: Verdict, customer_id: str | None,
    perception: tuple[float, float] | None, policy: Policy,
) -> dict[str, Any]:
    latest = v.surveys[-1] if v.surveys else None
    view: dict[str, Any] = dict(c.extra)
    view.update({
        "event_id": c.event_id,
        "contact_id": c.contact_id,
        "customer_id": customer_id,
        "occurred_at": c.occurred_at,
        "started_at": c.started_at,
        "channel": c.channel,
        "queue": c.queue,
        "outcome": c.outcome,
        "agent_id": c.agent,
        "reason": c.reason,
        "segment": c.segment,
        "wait_seconds": c.wait,
        "hold_seconds": c.hold,
        "talk_seconds": c.talk,
        "is_repeat": v.is_repeat,
        "repeat_of": v.repeat_of,
        "transfers": v.transfers,
        "resolution": v.resolution,
        "resolution_reasons": list(v.reasons),
        "surveys": len(v.surveys),
        "csat": latest.csat if latest else None,
        "nps": latest.nps if latest else None,
        "ces": latest.ces if latest else None,
        "survey_resolved": latest.resolved if latest else None,
        "survey_answered_at": latest.answered_at if latest else None,
        "perception": None if perception is None else {
            "before": perception[0], "after": perception[1]},
        "policy_version": policy.version,
    })
    return view


def _digest(view: dict[str, Any]) -> int:
    return zlib.crc32(repr(sorted(view.items())).encode())


def _basis(inputs: tuple[Any, ...]) -> int:
    """A 64-bit checksum of what a contact's view and counts are derived from: its record's
    event_id (a record never changes under one event_id: a correction is a new event), its
    verdict, the survey event_ids, its perception and the policy version."""
    text = repr(inputs).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)


def _prune(state: CustomerState, watermark: float, policy: Policy,
           verdicts: dict[str, Verdict], signals: list[Signal] | None = None) -> None:
    """Fold final perception signals into the snapshot and drop records nothing can change.

    Contacts before `live_from` stay as context only: the verdicts of later contacts depend on
    them, but their own verdicts are final and no longer recomputed (their context may be gone).
    """
    lateness, window, horizon = policy.allowed_lateness, policy.max_window, policy.join_horizon
    cutoff = watermark - 2 * lateness
    live_from = cutoff - window
    if state.customer_id is not None and (state.snapshot.t is None or cutoff > state.snapshot.t):
        earliest = min([c.t for c in state.contacts.values()]
                       + [r.t for r in state.transfers] + [r.t for r in state.surveys],
                       default=None)
        if earliest is not None and earliest < cutoff:
            curve = perception_curve(state, verdicts, watermark, policy, until=cutoff,
                                     signals=signals)
            s = curve.state
            state.snapshot = PerceptionSnapshot(s.t, s.score, s.at_risk, s.points, s.recent,
                                                s.last_signal)
    for cid in [cid for cid, c in state.contacts.items() if c.t < live_from - window]:
        del state.contacts[cid]
        state.emitted.pop(cid, None)
    state.transfers = [r for r in state.transfers if r.t >= live_from - horizon]
    state.surveys = [r for r in state.surveys if r.t >= live_from - horizon]
    state.superseded = [x for x in state.superseded if x[1] >= watermark - lateness]
    if state.live_from is None or live_from > state.live_from:
        state.live_from = live_from


def settle(state: CustomerState, watermark: float, policy: Policy) -> Settled:
    """Publish what changed in the state's verdicts at this watermark, then prune.

    Publishing comes first: a batch can move the watermark far ahead, and a contact applied in
    it must be published (with its final verdict) before it is pruned.
    """
    out = Settled()
    verdicts = derive_verdicts(state, watermark, policy)
    identified = state.customer_id is not None
    curve = None
    signals: list[Signal] | None = None
    if identified and not state.is_empty():
        signals = perception_signals(state, verdicts, watermark, policy)
        curve = perception_curve(state, verdicts, watermark, policy, signals=signals)
    live_from = state.live_from
    emitted = state.emitted
    for c in state.contacts.values():
        if live_from is not None and c.t < live_from:
            continue  # context only: its last published verdict is final
        v = verdicts[c.contact_id]
        before = emitted.get(c.contact_id)
        seen = curve.by_contact.get(c.contact_id) if curve else None
        if seen is not None:
            perception: tuple[float, float] | None = (round(seen.before, 2),
                                                      round(seen.after, 2))
        else:  # its signals are folded into the snapshot: keep what was published
            perception = before.perception if before else None
        inputs = (c.event_id, v.participates, v.is_repeat, v.repeat_of, v.transfers, v.status,
                  v.reasons, [s.event_id for s in v.surveys], perception, policy.version)
        if before is not None:
            if before.inputs is not None:
                if before.inputs == inputs:
                    continue  # nothing its view or counts derive from changed
            elif before.basis == _basis(inputs):
                before.inputs = inputs
                continue
        basis = _basis(inputs)
        counted = counted_of(c, v, identified)
        old = Counted.from_tuple(before.counted) if before else None
        if old != counted:
            add_delta(out.counter_deltas, old, counted)
        view = enriched_view(c, v, state.customer_id, perception, policy)
        digest = _digest(view)
        version = before.version if before else 0
        if before is None or before.digest != digest:
            version += 1
            view["version"] = version
            out.updates.append(ContactUpdate(c.contact_id, version, view))
        emitted[c.contact_id] = Emitted(version, digest, counted.to_tuple(), perception, basis,
                                        inputs)
    joined_now = (sum(len(v.surveys) for v in verdicts.values()), len(state.surveys),
                  sum(v.transfers for v in verdicts.values()), len(state.transfers))
    last = state.joins
    out.joins = (joined_now[0] - last[0], joined_now[1] - last[1], joined_now[2] - last[2],
                 joined_now[3] - last[3])
    held = (len(state.contacts), len(state.transfers), len(state.surveys))
    if curve is not None:
        band = min(9, max(0, int(curve.state.score // 10)))
        if band != state.band:
            out.band_change = (state.band, band)
            state.band = band
    if curve is not None and state.customer_id is not None:
        at_risk = curve.state.at_risk
        if at_risk != state.alerted_at_risk:
            state.alerted_at_risk = at_risk
            state.alert_version += 1
            out.alerts.append(CustomerAlert(
                state.customer_id, "at_risk_entered" if at_risk else "at_risk_left",
                state.alert_version, round(curve.state.score, 2),
                round(curve.state.drop(policy.perception.at_risk_drop_period), 2),
                tuple(curve.causes), curve.state.t or watermark,
            ))
    _prune(state, watermark, policy, verdicts, signals)
    # Pruned records leave these counts silently: the published totals only grow.
    if held == (len(state.contacts), len(state.transfers), len(state.surveys)):
        state.joins = joined_now
    else:
        after = derive_verdicts(state, watermark, policy)
        state.joins = (sum(len(v.surveys) for v in after.values()), len(state.surveys),
                       sum(v.transfers for v in after.values()), len(state.transfers))
    if state.is_empty():
        out.forget = True
        if state.band is not None:
            out.band_change = (state.band if out.band_change is None else out.band_change[1],
                               None)
            state.band = None
        if state.alerted_at_risk and state.customer_id is not None:
            state.alerted_at_risk = False
            state.alert_version += 1
            out.alerts.append(CustomerAlert(state.customer_id, "at_risk_left",
                                            state.alert_version, policy.perception.baseline,
                                            0.0, ("idle",), watermark))
        return out
    next_due: float | None = None
    for c in state.contacts.values():
        if state.emitted.get(c.contact_id) is not None and verdicts[c.contact_id].status == \
                STATUS_PENDING:
            due = c.t + policy.for_queue(c.queue).repeat_window
            next_due = due if next_due is None else min(next_due, due)
    lateness, window = policy.allowed_lateness, policy.max_window
    earliest = min([c.t for c in state.contacts.values()]
                   + [r.t for r in state.transfers] + [r.t for r in state.surveys])
    prune_at = earliest + 3 * lateness + 2 * window
    out.next_due = prune_at if next_due is None else min(next_due, prune_at)
    return out


def fold(
    state: CustomerState | None, event: ContactEvent, watermark: float, policy: Policy
) -> tuple[CustomerState, Settled, bool]:
    """One event in: the new state, what changed, and whether the event was new."""
    if state is None:
        state = new_state(event)
    applied = apply_event(state, event)
    return state, settle(state, watermark, policy), applied


def alert_payload(alert: CustomerAlert) -> dict[str, Any]:
    return {
        "customer_id": alert.customer_id,
        "alert": alert.alert,
        "version": alert.version,
        "score": alert.score,
        "drop": alert.drop,
        "causes": list(alert.causes),
        "at": rfc3339(alert.at),
    }
