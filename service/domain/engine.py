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

import zlib
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from service.domain.cardinality import LabelCaps
from service.domain.counters import (
    STATUS_NONE,
    STATUS_PENDING,
    STATUS_RESOLVED,
    STATUS_UNRESOLVED,
    BucketKey,
    Counted,
    add_change,
    expand,
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
    ContactPerception,
    CurveResult,
    CurveTrack,
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
    CustomerHistory,
    CustomerState,
    Emitted,
    PerceptionSnapshot,
    SurveyRecord,
    TransferRecord,
    basis_of,
)
from service.domain.storage_names import customer_state, unidentified_state

REPEAT_CONTACT = "repeat_contact"
TRANSFERRED = "transferred"
SURVEY_UNRESOLVED = "survey_unresolved"
_STATUS_NAMES = {STATUS_PENDING: "pending", STATUS_RESOLVED: "resolved",
                 STATUS_UNRESOLVED: "unresolved"}


def state_key(event: ContactEvent) -> str:
    """Where an event's state lives: its customer, or its contact for an unidentified caller."""
    customer = event.header.customer_id
    return (customer_state(customer) if customer is not None
            else unidentified_state(event.header.contact_id))


def new_state(event: ContactEvent) -> CustomerState:
    return CustomerState(customer_id=event.header.customer_id)


def overflows(state: CustomerState, event: ContactEvent, limit: int) -> bool:
    """Whether `event` must be held apart from its customer's `state`: the customer already
    has `limit` contacts in its window (or is noisy) and the event is of another contact.
    Such contacts are counted as unidentified callers' are (`held_apart`), so one shared id
    cannot grow a state, nor its repeat search, without bound. `limit` 0: no limit."""
    if limit <= 0 or state.customer_id is None:
        return False
    contact = event.header.contact_id
    if contact in state.contacts:
        return False
    return state.noisy or (isinstance(event, CallEnded) and len(state.contacts) >= limit)


def held_apart(event: ContactEvent) -> tuple[str, CustomerState]:
    """The state key and a new state for an event of a noisy customer held apart: its
    contact's own, unidentified, remembering the customer_id it carried."""
    header = event.header
    return (unidentified_state(header.contact_id),
            CustomerState(customer_id=None, alias=header.customer_id))


# -- applying events ---------------------------------------------------------------------------


def apply_event(state: CustomerState, event: ContactEvent) -> bool:
    """Add the event to the state; False when its event_id was already applied."""
    header = event.header
    memo = state.memo
    if memo is not None:
        if header.event_id in memo.ids:
            return False
    elif state.seen(header.event_id):
        return False
    if isinstance(event, CallEnded):
        record = ContactRecord.of(event)
        current = state.contacts.get(record.contact_id)
        if current is None:
            state.contacts[record.contact_id] = record
            if memo is not None:
                memo.contact_recorded(None, record)
        elif (record.t, record.event_id) > (current.t, current.event_id):
            # A second call-ended for one contact: the later one (by time, then id) stands.
            state.superseded.append((current.event_id, current.t))
            state.contacts[record.contact_id] = record
            if memo is not None:
                memo.contact_recorded(current, record)
        else:
            state.superseded.append((record.event_id, record.t))
            if memo is not None:
                memo.ids.add(record.event_id)
    elif isinstance(event, Transfer):
        transfer = TransferRecord.of(event)
        state.transfers.append(transfer)
        if memo is not None:
            memo.add_record(transfer)
    elif isinstance(event, SurveyAnswered):
        survey = SurveyRecord.of(event)
        state.surveys.append(survey)
        if memo is not None:
            memo.add_record(survey)
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
        verdicts[c.contact_id] = _participant_verdict(
            c, c.contact_id in repeated, repeat_of.get(c.contact_id), n_transfers, joined,
            watermark, policy)
    return verdicts


def _join_horizon_records(records: list[Any] | None, t: float, horizon: float) -> list[Any]:
    return [r for r in records if abs(r.t - t) <= horizon] if records else []


def contact_verdict(c: ContactRecord, memo: Memo, watermark: float, policy: Policy) -> Verdict:
    """One contact's verdict from the memo's indexes: the same as `derive_verdicts` gives it."""
    cid = c.contact_id
    horizon = policy.join_horizon
    n_transfers = len(_join_horizon_records(memo.transfers_of.get(cid), c.t, horizon))
    found = _join_horizon_records(memo.surveys_of.get(cid), c.t, horizon)
    if len(found) > 1:
        found.sort(key=lambda sv: (sv.t, sv.event_id))
    joined: tuple[SurveyRecord, ...] = tuple(found)
    if not (memo.identified and c.outcome == "handled"):
        return Verdict(False, False, None, n_transfers, STATUS_NONE, (), joined)
    handled, contacts = memo.handled, memo.contacts
    max_window = policy.max_window
    i = bisect_left(handled, (c.t, cid))
    repeat_of: str | None = None
    for j in range(i - 1, -1, -1):
        pt, pid = handled[j]
        if c.t - pt > max_window:
            break
        if _in_scope(contacts[pid], c, policy):
            repeat_of = pid
            break
    repeated = False
    for j in range(i + 1, len(handled)):
        lt, lid = handled[j]
        if lt - c.t > max_window:
            break
        if _in_scope(c, contacts[lid], policy):
            repeated = True
            break
    return _participant_verdict(c, repeated, repeat_of, n_transfers, joined, watermark, policy)


def _participant_verdict(c: ContactRecord, repeated: bool, repeat_of: str | None,
                         n_transfers: int, joined: tuple[SurveyRecord, ...], watermark: float,
                         policy: Policy) -> Verdict:
    """The verdict of a contact in the FCR population, from what was found around it."""
    rules = policy.for_queue(c.queue)
    reasons: list[str] = []
    if repeated:
        reasons.append(REPEAT_CONTACT)
    if n_transfers and rules.transfer_breaks_fcr:
        reasons.append(TRANSFERRED)
    if any(sv.resolved is False for sv in joined):
        reasons.append(SURVEY_UNRESOLVED)
    if reasons:
        status = STATUS_UNRESOLVED
    elif watermark > c.t + rules.repeat_window:
        status = STATUS_RESOLVED
    else:
        status = STATUS_PENDING
    return Verdict(True, repeat_of is not None, repeat_of, n_transfers, status, tuple(reasons),
                   joined)


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


# -- the memo: what settling keeps of a customer between settles ------------------------------

PRUNE_STEP = 86400.0  # records are dropped a day's worth at a time (see Memo)
_LAST = "\U0010ffff"


def _signals_of_contact(c: ContactRecord, v: Verdict, policy: Policy) -> tuple[Signal, ...]:
    """A contact's perception signals, as `perception_signals` makes them."""
    cid = c.contact_id
    target, weight, cause = contact_signal(policy.perception, c.outcome, c.wait, c.hold)
    out = [Signal(c.t, RANK_CONTACT, cid, target, weight, cause, cid)]
    if v.is_repeat:
        out.append(Signal(c.t, RANK_REPEAT, cid, REPEAT[0], REPEAT[1], REPEAT[2], cid))
    if v.status == STATUS_RESOLVED:
        out.append(Signal(c.t + policy.for_queue(c.queue).repeat_window, RANK_RESOLUTION, cid,
                          RESOLVED[0], RESOLVED[1], RESOLVED[2]))
    return tuple(out)


def _record_signals(record: TransferRecord | SurveyRecord) -> list[Signal]:
    if isinstance(record, TransferRecord):
        return [Signal(record.t, RANK_TRANSFER, record.event_id, *TRANSFER)]
    return [Signal(record.t, RANK_SURVEY, record.event_id, *spec)
            for spec in survey_signals(record.csat, record.nps, record.ces, record.resolved)]


class Memo:
    """What `settle` derived from a customer's state, kept on the state object (never stored)
    so the next settle redoes only what the events since changed.

    `apply_event` tells the memo what it added: the contacts whose verdict may change (the
    contact itself, its transfers and surveys, its neighbours within the longest window), and
    the perception signals to insert. `settle` recomputes those verdicts, runs the curve from
    the first signal that changed (`CurveTrack`), and rebuilds the views of the contacts whose
    verdict or perception changed. A state read from storage starts without a memo: its first
    settle derives everything, as it would without one. Dropping old records moves the
    perception snapshot, so the memo is rebuilt then; records are dropped in steps of
    `PRUNE_STEP` so that this happens about once a day of event time per customer.
    """

    __slots__ = (
        "contacts",
        "dirty",
        "earliest_contact",
        "earliest_other",
        "handled",
        "identified",
        "ids",
        "joined",
        "latest",
        "pending",
        "pending_min",
        "policy",
        "recorded",
        "signals",
        "surveys_of",
        "touched",
        "track",
        "transfers_of",
        "uniform",
        "verdicts",
    )

    def __init__(self, state: CustomerState, policy: Policy) -> None:
        self.policy = policy
        self.identified = identified = state.customer_id is not None
        self.contacts = state.contacts
        self.ids: set[str] = {x[0] for x in state.superseded}
        self.handled: list[tuple[float, str]] = []
        self.transfers_of: dict[str, list[TransferRecord]] = {}
        self.surveys_of: dict[str, list[SurveyRecord]] = {}
        self.verdicts: dict[str, Verdict] = {}
        self.signals: dict[str, tuple[Signal, ...]] = {}
        self.dirty: set[str] = set(state.contacts)  # verdicts to derive again
        self.recorded: set[str] = set(state.contacts)  # contacts with a new record
        self.touched: set[str] = set(state.contacts)  # views and counts to check
        self.pending: dict[str, float] = {}  # contacts pending -> when their window closes
        self.pending_min = float("inf")
        self.joined = [0, 0]  # surveys joined, transfers joined
        self.earliest_contact = float("inf")
        self.earliest_other = float("inf")
        self.latest: tuple[float, str] | None = None
        # One window for every queue and no scope rules: only a new contact's nearest
        # neighbours can change their verdicts.
        self.uniform = not policy.per_queue and not (
            policy.default.repeat_same_reason or policy.default.repeat_same_channel)
        for c in state.contacts.values():
            self.ids.add(c.event_id)
            if identified and c.outcome == "handled":
                self.handled.append((c.t, c.contact_id))
            self._note_contact(c)
        self.handled.sort()
        self.track: CurveTrack | None = None
        if identified:
            baseline = _baseline(state, policy)
            self.track = CurveTrack(start_state(state.snapshot, baseline), baseline,
                                    state.snapshot.t, policy.perception,
                                    policy.allowed_lateness + policy.max_window)
        for tr in state.transfers:
            self.add_record(tr)
        for sv in state.surveys:
            self.add_record(sv)

    def _note_contact(self, c: ContactRecord) -> None:
        if c.t < self.earliest_contact:
            self.earliest_contact = c.t
        key = (c.t, c.contact_id)
        if self.latest is None or key > self.latest:
            self.latest = key

    def add_record(self, record: TransferRecord | SurveyRecord) -> None:
        """A transfer or survey applied to the state."""
        self.ids.add(record.event_id)
        index = self.transfers_of if isinstance(record, TransferRecord) else self.surveys_of
        index.setdefault(record.contact_id, []).append(record)  # type: ignore[arg-type]
        if record.contact_id in self.contacts:
            self.dirty.add(record.contact_id)
        if record.t < self.earliest_other:
            self.earliest_other = record.t
        if self.track is not None:
            for sig in _record_signals(record):
                self.track.add(sig)

    def contact_recorded(self, old: ContactRecord | None, new: ContactRecord) -> None:
        """A call-ended applied: `new` is the contact's record now, `old` the one it replaced."""
        cid = new.contact_id
        self.ids.add(new.event_id)
        self.dirty.add(cid)
        self.recorded.add(cid)
        participates = self.identified
        if old is not None:
            if participates and old.outcome == "handled":
                key = (old.t, cid)
                i = bisect_left(self.handled, key)
                if i < len(self.handled) and self.handled[i] == key:
                    del self.handled[i]
                self._mark_window(old.t)
            if old.t <= self.earliest_contact:
                self.earliest_contact = min(c.t for c in self.contacts.values())
            if self.latest == (old.t, cid):
                self.latest = max((c.t, c.contact_id) for c in self.contacts.values())
        if participates and new.outcome == "handled":
            key = (new.t, cid)
            i = bisect_left(self.handled, key)
            self.handled.insert(i, key)
            if self.uniform and old is None:
                if i > 0:
                    self.dirty.add(self.handled[i - 1][1])
                if i + 1 < len(self.handled):
                    self.dirty.add(self.handled[i + 1][1])
            else:
                self._mark_window(new.t)
        self._note_contact(new)

    def _mark_window(self, t: float) -> None:
        """Every handled contact within the longest window of `t`: their verdicts may change."""
        window = self.policy.max_window
        handled = self.handled
        lo = bisect_left(handled, (t - window,))
        for j in range(lo, len(handled)):
            ht, hid = handled[j]
            if ht - t > window:
                break
            self.dirty.add(hid)


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
    inputs = (c.event_id, v.participates, v.is_repeat, v.repeat_of, v.transfers, v.status,
              v.reasons, [sv.event_id for sv in v.surveys], perception, policy.version)
    if before is not None:
        if before.inputs is not None:
            if before.inputs == inputs:
                return  # nothing its view or counts derive from changed
        elif before.basis == basis_of(inputs):
            before.inputs = inputs
            return
    identified = state.customer_id is not None
    counted = counted_of(c, v, identified)
    if caps is not None:
        counted = caps.counted(counted)
    old = Counted.from_tuple(before.counted) if before else None
    if old != counted:
        add_change(out.counts, old, counted)
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


def _derive_changes(state: CustomerState, memo: Memo, watermark: float, policy: Policy
                    ) -> None:
    """Derive again the verdicts the memo marked, and move their signals on the curve."""
    contacts, verdicts, track = state.contacts, memo.verdicts, memo.track
    if memo.pending and watermark > memo.pending_min:
        memo.dirty.update(cid for cid, due in memo.pending.items() if watermark > due)
    pending_changed = False
    for cid in memo.dirty:
        c = contacts.get(cid)
        if c is None:
            continue
        v = contact_verdict(c, memo, watermark, policy)
        old = verdicts.get(cid)
        new_record = cid in memo.recorded
        if old is not None and not new_record and old == v:
            continue
        verdicts[cid] = v
        memo.touched.add(cid)
        if old is not None:
            memo.joined[0] += len(v.surveys) - len(old.surveys)
            memo.joined[1] += v.transfers - old.transfers
        else:
            memo.joined[0] += len(v.surveys)
            memo.joined[1] += v.transfers
        if v.status == STATUS_PENDING:
            memo.pending[cid] = c.t + policy.for_queue(c.queue).repeat_window
            pending_changed = True
        elif memo.pending.pop(cid, None) is not None:
            pending_changed = True
        if track is not None and (
                new_record or old is None or old.is_repeat != v.is_repeat
                or (old.status == STATUS_RESOLVED) != (v.status == STATUS_RESOLVED)):
            sigs = _signals_of_contact(c, v, policy)
            previous = memo.signals.get(cid, ())
            if sigs != previous:
                for sig in previous:
                    track.remove(sig)
                for sig in sigs:
                    track.add(sig)
                memo.signals[cid] = sigs
    memo.dirty.clear()
    memo.recorded.clear()
    if pending_changed:
        memo.pending_min = min(memo.pending.values(), default=float("inf"))


def _prune_due(state: CustomerState, memo: Memo, watermark: float, policy: Policy) -> bool:
    """Whether records are a step past the point where they are dropped."""
    lateness, window = policy.allowed_lateness, policy.max_window
    live_from = watermark - 2 * lateness - window
    return (memo.earliest_contact < live_from - window - PRUNE_STEP
            or memo.earliest_other < live_from - policy.join_horizon - PRUNE_STEP)


def settle(state: CustomerState, watermark: float, policy: Policy,
           caps: LabelCaps | None = None) -> Settled:
    """Publish what changed in the state's verdicts at this watermark, then prune.

    Publishing comes first: a batch can move the watermark far ahead, and a contact applied in
    it must be published (with its final verdict) before it is pruned. `caps` bound the queue,
    segment and agent names the counts are kept under (none: every name its own).
    """
    out = Settled()
    memo = state.memo
    if memo is None or memo.policy is not policy:
        memo = state.memo = Memo(state, policy)
    _derive_changes(state, memo, watermark, policy)
    track = memo.track
    curve_now = None
    if track is not None and not state.is_empty():
        latest = state.contacts[memo.latest[1]] if memo.latest is not None else None
        segment = (latest.segment if latest else
                   state.history.segment if state.history else None)
        baseline = policy.perception.baseline_for(segment)
        if baseline != track.baseline:  # the latest contact changed the segment's baseline
            memo = state.memo = Memo(state, policy)
            _derive_changes(state, memo, watermark, policy)
            track = memo.track
            assert track is not None
        memo.touched.update(track.run())
        curve_now = track.now(watermark)
    live_from = state.live_from
    contacts, verdicts = state.contacts, memo.verdicts
    by_contact = track.by_contact if track is not None else None
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
    joined_now = (memo.joined[0], len(state.surveys), memo.joined[1], len(state.transfers))
    last = state.joins
    out.joins = (joined_now[0] - last[0], joined_now[1] - last[1], joined_now[2] - last[2],
                 joined_now[3] - last[3])
    state.joins = joined_now
    if curve_now is not None:
        band = min(9, max(0, int(curve_now.score // 10)))
        if band != state.band:
            out.band_change = (state.band, band)
            state.band = band
        at_risk = curve_now.at_risk
        if at_risk != state.alerted_at_risk and state.customer_id is not None:
            assert track is not None
            state.alerted_at_risk = at_risk
            state.alert_version += 1
            alert = CustomerAlert(
                state.customer_id, "at_risk_entered" if at_risk else "at_risk_left",
                state.alert_version, round(curve_now.score, 2),
                round(curve_now.drop(policy.perception.at_risk_drop_period), 2),
                tuple(track.causes()), curve_now.t or watermark,
            )
            out.alerts.append(alert)
            _remember_alert(state, alert)
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
    pruned = _prune_due(state, memo, watermark, policy)
    if pruned:
        signals = track.signals if track is not None else None
        _prune(state, watermark, policy, verdicts, signals)
        state.memo = None
        after = derive_verdicts(state, watermark, policy)
        state.joins = (sum(len(v.surveys) for v in after.values()), len(state.surveys),
                       sum(v.transfers for v in after.values()), len(state.transfers))
    if state.is_empty():
        # No record left: an unidentified caller's contact is forgotten; an identified
        # customer is kept as their history and curve snapshot (idle: nothing is due).
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
                                  policy.perception.baseline, 0.0, ("idle",), watermark)
            out.alerts.append(alert)
            _remember_alert(state, alert)
        # Any next signal comes after a silence longer than W + L and starts the curve again
        # (run_curve), so the snapshot's drop history and at-risk flag are no longer needed.
        state.snapshot.at_risk = False
        state.snapshot.recent = []
        return out
    if pruned:
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
    out.next_due = prune_at if next_due is None else min(next_due, prune_at)
    return out


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
