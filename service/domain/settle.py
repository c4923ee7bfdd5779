"""Settling a customer: derive what changed in its verdicts and perception at a watermark,
publish it (counter deltas, new versions of enriched contacts, at-risk alerts), then drop the
records nothing can change any more.

Because verdicts are recomputed from the set of events, not patched event by event, any
arrival order of the same events gives the same verdicts, counters and perception curve.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from service.domain.cardinality import LabelCaps
from service.domain.counters import (
    STATUS_NONE,
    STATUS_PENDING,
    BucketKey,
    Counted,
    add_change,
    expand,
)
from service.domain.curve import perception_curve
from service.domain.memo import PRUNE_STEP, Memo, derive_changes, prune_due
from service.domain.perception import ContactPerception, CurveState, Signal
from service.domain.policy import Policy
from service.domain.records import (
    ContactRecord,
    CustomerHistory,
    CustomerState,
    Emitted,
    PerceptionSnapshot,
    basis_of,
)
from service.domain.value import (
    NO_SEGMENT,
    RiskEntry,
    cents,
    customer_value,
    last_contacts,
    segment_of,
)
from service.domain.verdicts import Verdict, counted_of, derive_verdicts


# Not frozen, never changed once built: see Counted (counters.py).
@dataclass(slots=True)
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
    value: float | None = None  # the customer's value (domain/value.py)


@dataclass
class Settled:
    # Count vectors per bucket key (counters.add_change); `counter_deltas` as hash fields.
    counts: dict[BucketKey, list[int]] = field(default_factory=dict)
    updates: list[ContactUpdate] = field(default_factory=list)
    alerts: list[CustomerAlert] = field(default_factory=list)
    next_due: float | None = None
    forget: bool = False  # the state is to be deleted (an unidentified caller's, all dropped)
    idle: bool = False  # every record dropped: only the customer's history is kept, no timer
    band_change: tuple[int | None, int | None] | None = None  # (old, new) perception band
    # Growth of (surveys joined, surveys, transfers joined, transfers) since the last settle
    joins: tuple[int, int, int, int] = (0, 0, 0, 0)
    # The at-risk work list (domain/value.py): the customer's entry to write, or its removal;
    # and the change of what it counts in the value at risk: (old, new) (segment, cents).
    risk_entry: RiskEntry | None = None
    risk_removed: bool = False
    risk_change: tuple[tuple[str, int] | None, tuple[str, int] | None] | None = None

    @property
    def counter_deltas(self) -> dict[int, dict[str, int]]:
        """Per-hour hash-field deltas: what `counts` adds to each dimension's counters."""
        return expand(self.counts)


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
    # speech and text analytics, only when the event carried them
    if c.sentiment is not None:
        view["sentiment"] = c.sentiment
    if c.complaint is not None:
        view["complaint"] = c.complaint
    if c.topics is not None:
        view["topics"] = list(c.topics)
    return view


def _digest(view: dict[str, Any]) -> int:
    return zlib.crc32(repr(sorted(view.items())).encode())


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
    history = state.history
    if history is None and state.customer_id is not None:
        history = state.history = CustomerHistory()
    for cid in [cid for cid, c in state.contacts.items() if c.t < live_from - window]:
        c = state.contacts.pop(cid)
        emitted = state.emitted.pop(cid, None)
        if history is not None:  # its verdict is final: keep it in the customer's history
            if emitted is not None:
                status = emitted.counted[7]  # Counted.status
            else:
                v = verdicts.get(cid)
                status = v.status if v is not None else STATUS_NONE
            history.add_contact(c, status)
    if history is not None:
        history.trim(watermark)
    state.transfers = [r for r in state.transfers if r.t >= live_from - horizon]
    state.surveys = [r for r in state.surveys if r.t >= live_from - horizon]
    state.superseded = [x for x in state.superseded if x[1] >= watermark - lateness]
    if state.live_from is None or live_from > state.live_from:
        state.live_from = live_from


def _publish_contact(state: CustomerState, c: ContactRecord, v: Verdict,
                     seen: ContactPerception | None, policy: Policy, out: Settled,
                     caps: LabelCaps | None = None) -> None:
    """Compare what the contact's view and counts derive from with what was last published;
    when it changed, retract and add its counts and publish a new version if its view
    changed."""
    emitted = state.emitted
    before = emitted.get(c.contact_id)
    if seen is not None:
        perception: tuple[float, float] | None = (round(seen.before, 2), round(seen.after, 2))
    else:  # its signals are folded into the snapshot: keep what was published
        perception = before.perception if before else None
    inputs: tuple[Any, ...] = (
        c.event_id, v.participates, v.is_repeat, v.repeat_of, v.transfers, v.status, v.reasons,
        [sv.event_id for sv in v.surveys], perception, policy.version)
    if v.repeated_by is not None:  # what it led to (repeat drivers): only when it has a repeat
        inputs += (v.repeated_by,)
    same_view = False
    if before is not None:
        if before.inputs is not None:
            same_view = before.inputs == inputs
        elif before.basis == basis_of(inputs):
            before.inputs = inputs
            same_view = True
        # Nothing its view or counts derive from changed. Whether a self-service or abandoned
        # contact was followed (containment) is in its counts only, not in its view.
        if same_view and (c.outcome == "handled"
                          or Counted.from_tuple(before.counted).followed == v.followed):
            return
    identified = state.customer_id is not None
    counted = counted_of(c, v, identified)
    if caps is not None:
        counted = caps.counted(counted)
    old = Counted.from_tuple(before.counted) if before else None
    if old != counted:
        add_change(out.counts, old, counted)
    if same_view and before is not None:  # only its counts changed: no new version
        emitted[c.contact_id] = Emitted(before.version, before.digest, counted.to_tuple(),
                                        before.perception, before.basis, before.inputs)
        return
    view = enriched_view(c, v, state.customer_id if state.alias is None else state.alias,
                         perception, policy)
    version = before.version if before else 0
    digest = 0  # only states stored before view checksums existed are compared by digest
    if before is not None and before.inputs is None and before.basis is None:
        digest = _digest(view)
        changed = before.digest != digest
    else:
        changed = True  # its inputs changed, and the view is a function of them
    if changed:
        version += 1
        view["version"] = version
        out.updates.append(ContactUpdate(c.contact_id, version, view))
    # The checksum of the inputs is computed when the state is stored (records.py).
    emitted[c.contact_id] = Emitted(version, digest, counted.to_tuple(), perception, None,
                                    inputs)

def settle(state: CustomerState, watermark: float, policy: Policy,
           caps: LabelCaps | None = None) -> Settled:
    """Publish what changed in the state's verdicts at this watermark, then prune.

    Publishing comes first: a batch can move the watermark far ahead, and a contact applied in
    it must be published (with its final verdict) before it is pruned. `caps` bound the queue,
    segment and agent names the counts are kept under (none: every name its own).
    """
    out = Settled()
    memo, curve_now = _derive(state, watermark, policy)
    _publish_touched(state, memo, policy, out, caps)
    joined_now = (memo.joined[0], len(state.surveys), memo.joined[1], len(state.transfers))
    last = state.joins
    out.joins = (joined_now[0] - last[0], joined_now[1] - last[1], joined_now[2] - last[2],
                 joined_now[3] - last[3])
    state.joins = joined_now
    entry = None
    if curve_now is not None:
        _judge_customer(state, memo, curve_now, watermark, policy, out)
        if state.alerted_at_risk and state.customer_id is not None:
            entry = _risk_entry(state, memo, curve_now, policy, caps)
    lateness, window = policy.allowed_lateness, policy.max_window
    new_live_from = watermark - 2 * lateness - window
    if state.live_from is None or new_live_from > state.live_from:
        state.live_from = new_live_from
    if state.superseded and state.superseded[0][1] < watermark - lateness:
        kept = [x for x in state.superseded if x[1] >= watermark - lateness]
        for event_id, _ in state.superseded:
            memo.ids.discard(event_id)
        memo.ids.update(x[0] for x in kept)
        state.superseded = kept
    pruned = prune_due(state, memo, watermark, policy)
    if pruned:
        track = memo.track
        _prune(state, watermark, policy, memo.verdicts,
               track.signals if track is not None else None)
        state.memo = None
        after = derive_verdicts(state, watermark, policy)
        state.joins = (sum(len(v.surveys) for v in after.values()), len(state.surveys),
                       sum(v.transfers for v in after.values()), len(state.transfers))
    if state.is_empty():
        _emptied(state, watermark, policy, out)
    else:
        out.next_due = _next_due(state, memo, pruned, policy)
    _count_risk(state, entry, out)
    return out


def _risk_entry(state: CustomerState, memo: Memo, curve_now: CurveState, policy: Policy,
                caps: LabelCaps | None) -> RiskEntry:
    """The customer's entry in the at-risk work list, as of this settle."""
    assert state.customer_id is not None
    assert memo.track is not None
    segment = segment_of(state)
    if segment is not None and caps is not None:
        segment = caps.segment.label(segment)
    entered = state.history.entered if state.history is not None else None
    statuses = {cid: e.counted[7] for cid, e in state.emitted.items()}  # Counted.status
    return RiskEntry(
        state.customer_id, NO_SEGMENT if segment is None else segment,
        customer_value(state, policy), round(curve_now.score, 2),
        entered[0] if entered else (curve_now.t or 0.0),
        round(curve_now.drop(policy.perception.at_risk_drop_period), 2),
        tuple(memo.track.causes()), last_contacts(state, statuses))


def _count_risk(state: CustomerState, entry: RiskEntry | None, out: Settled) -> None:
    """Write the customer's work-list entry when it changed, remove it when they left
    at-risk, and move what they count in the value at risk by the difference."""
    counted = state.risk
    if state.alerted_at_risk and state.customer_id is not None:
        if entry is not None:
            counted = (entry.segment, cents(entry.value))
            digest = zlib.crc32(repr(entry).encode())
            if digest != state.risk_digest:
                out.risk_entry = entry
                state.risk_digest = digest
    else:
        counted = None
        if state.risk is not None:
            out.risk_removed = True
        state.risk_digest = None
    if counted != state.risk:
        out.risk_change = (state.risk, counted)
        state.risk = counted


def _derive(state: CustomerState, watermark: float, policy: Policy
            ) -> tuple[Memo, CurveState | None]:
    """Bring the state's memo up to date: its verdicts, and its curve, to the watermark."""
    memo = state.memo
    if memo is None or memo.policy is not policy:
        memo = state.memo = Memo(state, policy)
    derive_changes(state, memo, watermark, policy)
    track = memo.track
    if track is None or state.is_empty():
        return memo, None
    latest = state.contacts[memo.latest[1]] if memo.latest is not None else None
    segment = (latest.segment if latest else
               state.history.segment if state.history else None)
    baseline = policy.perception.baseline_for(segment)
    if baseline != track.baseline:  # the latest contact changed the segment's baseline
        memo = state.memo = Memo(state, policy)
        derive_changes(state, memo, watermark, policy)
        track = memo.track
        assert track is not None
    memo.touched.update(track.run())
    return memo, track.now(watermark)


def _publish_touched(state: CustomerState, memo: Memo, policy: Policy, out: Settled,
                     caps: LabelCaps | None) -> None:
    """Publish the contacts whose verdict or perception may have changed, in time order."""
    live_from = state.live_from
    contacts, verdicts = state.contacts, memo.verdicts
    by_contact = memo.track.by_contact if memo.track is not None else None
    touched = memo.touched
    if len(touched) > 1:
        order = sorted(touched, key=lambda cid: (contacts[cid].t, cid) if cid in contacts
                       else (0.0, cid))
    else:
        order = list(touched)
    touched.clear()
    for cid in order:
        c = contacts.get(cid)
        if c is None or (live_from is not None and c.t < live_from):
            continue  # context only: its last published verdict is final
        _publish_contact(state, c, verdicts[cid],
                         by_contact.get(cid) if by_contact is not None else None, policy, out,
                         caps)


def _judge_customer(state: CustomerState, memo: Memo, curve_now: CurveState,
                    watermark: float, policy: Policy, out: Settled) -> None:
    """Count the customer's perception band, and alert when at-risk was entered or left."""
    band = min(9, max(0, int(curve_now.score // 10)))
    if band != state.band:
        out.band_change = (state.band, band)
        state.band = band
    at_risk = curve_now.at_risk
    if at_risk != state.alerted_at_risk and state.customer_id is not None:
        track = memo.track
        assert track is not None
        state.alerted_at_risk = at_risk
        state.alert_version += 1
        alert = CustomerAlert(
            state.customer_id, "at_risk_entered" if at_risk else "at_risk_left",
            state.alert_version, round(curve_now.score, 2),
            round(curve_now.drop(policy.perception.at_risk_drop_period), 2),
            tuple(track.causes()), curve_now.t or watermark, customer_value(state, policy),
        )
        out.alerts.append(alert)
        _remember_alert(state, alert)


def _emptied(state: CustomerState, watermark: float, policy: Policy, out: Settled) -> None:
    """No record left: an unidentified caller's contact is forgotten; an identified customer
    is kept as their history and curve snapshot (idle: nothing is due)."""
    out.forget = state.customer_id is None
    out.idle = not out.forget
    if state.band is not None:
        out.band_change = (state.band if out.band_change is None else out.band_change[1],
                           None)
        state.band = None
    if state.alerted_at_risk and state.customer_id is not None:
        state.alerted_at_risk = False
        state.alert_version += 1
        alert = CustomerAlert(state.customer_id, "at_risk_left", state.alert_version,
                              policy.perception.baseline, 0.0, ("idle",), watermark,
                              customer_value(state, policy))
        out.alerts.append(alert)
        _remember_alert(state, alert)
    # Any next signal comes after a silence longer than W + L and starts the curve again
    # (run_curve), so the snapshot's drop history and at-risk flag are no longer needed.
    state.snapshot.at_risk = False
    state.snapshot.recent = []


def _next_due(state: CustomerState, memo: Memo, pruned: bool, policy: Policy) -> float:
    """When the state must be settled again without a new event: when a pending contact's
    window closes, or when its oldest records are due to be dropped."""
    lateness, window = policy.allowed_lateness, policy.max_window
    if pruned:
        verdicts = memo.verdicts
        next_due: float | None = None
        for c in state.contacts.values():
            v = verdicts.get(c.contact_id)
            if state.emitted.get(c.contact_id) is not None and v is not None \
                    and v.status == STATUS_PENDING:
                due = c.t + policy.for_queue(c.queue).repeat_window
                next_due = due if next_due is None else min(next_due, due)
        earliest = min([c.t for c in state.contacts.values()]
                       + [r.t for r in state.transfers] + [r.t for r in state.surveys])
    else:
        next_due = memo.pending_min if memo.pending else None
        earliest = min(memo.earliest_contact, memo.earliest_other)
    prune_at = earliest + 3 * lateness + 2 * window + PRUNE_STEP
    return prune_at if next_due is None else min(next_due, prune_at)


def _remember_alert(state: CustomerState, alert: CustomerAlert) -> None:
    """Keep the last at-risk episode in the customer's history, as its alerts said it."""
    entry = [alert.at, alert.score, alert.drop, list(alert.causes)]
    history = state.history
    if history is None:
        history = state.history = CustomerHistory()
    if alert.alert == "at_risk_entered":
        history.entered, history.left = entry, None
    else:
        history.left = entry


def alert_payload(alert: CustomerAlert) -> dict[str, Any]:
    return {
        "customer_id": alert.customer_id,
        "alert": alert.alert,
        "version": alert.version,
        "score": alert.score,
        "drop": alert.drop,
        "causes": list(alert.causes),
        "at": rfc3339(alert.at),
        **({} if alert.value is None else {"value": alert.value}),
    }

