"""The memo: what settling keeps of a customer between settles, so the next settle redoes
only what the events since changed (see `Memo`)."""

from __future__ import annotations

from bisect import bisect_left, insort

from service.domain.containment import FOLLOWED_OUTCOMES, is_followed
from service.domain.counters import STATUS_NONE, STATUS_PENDING, STATUS_RESOLVED
from service.domain.curve import baseline_of, record_signals, signals_of_contact
from service.domain.perception import CurveTrack, Signal, start_state
from service.domain.policy import Policy
from service.domain.records import ContactRecord, CustomerState, SurveyRecord, TransferRecord
from service.domain.verdicts import (
    Verdict,
    joined_records,
    participant_verdict,
    scan_neighbours,
)

PRUNE_STEP = 86400.0  # records are dropped a day's worth at a time (see Memo)


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
        "everyone",
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
        "unhandled",
        "uniform",
        "verdicts",
    )

    def __init__(self, state: CustomerState, policy: Policy) -> None:
        self.policy = policy
        self.identified = identified = state.customer_id is not None
        self.contacts = state.contacts
        self.ids: set[str] = {x[0] for x in state.superseded}
        self.handled: list[tuple[float, str]] = []
        # Containment (domain/containment): every contact, and the self-service and abandoned
        # ones whose `followed` a contact recorded after them may change (identified only).
        self.everyone: list[tuple[float, str]] = []
        self.unhandled: list[tuple[float, str]] = []
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
            if identified:
                if c.outcome == "handled":
                    self.handled.append((c.t, c.contact_id))
                self.everyone.append((c.t, c.contact_id))
                if c.outcome in FOLLOWED_OUTCOMES:
                    self.unhandled.append((c.t, c.contact_id))
            self._note_contact(c)
        self.handled.sort()
        self.everyone.sort()
        self.unhandled.sort()
        self.track: CurveTrack | None = None
        if identified:
            baseline = baseline_of(state, policy)
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
            for sig in record_signals(record):
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
        if participates:
            self._followers_changed(old, new)
        self._note_contact(new)

    def _followers_changed(self, old: ContactRecord | None, new: ContactRecord) -> None:
        """Keep the containment indexes, and mark the self-service and abandoned contacts
        within the longest window before the old and new record: their `followed` may
        change."""
        cid = new.contact_id
        if old is not None:
            _remove(self.everyone, (old.t, cid))
            if old.outcome in FOLLOWED_OUTCOMES:
                _remove(self.unhandled, (old.t, cid))
        insort(self.everyone, (new.t, cid))
        if new.outcome in FOLLOWED_OUTCOMES:
            insort(self.unhandled, (new.t, cid))
        unhandled = self.unhandled
        if not unhandled:
            return
        window = self.policy.max_window
        for t in (new.t,) if old is None else (old.t, new.t):
            for j in range(bisect_left(unhandled, (t - window,)), len(unhandled)):
                ut, uid = unhandled[j]
                if ut > t:
                    break
                self.dirty.add(uid)

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


def _remove(keys: list[tuple[float, str]], key: tuple[float, str]) -> None:
    i = bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        del keys[i]


def derive_changes(state: CustomerState, memo: Memo, watermark: float, policy: Policy) -> None:
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
            sigs = signals_of_contact(c, v, policy)
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


def prune_due(state: CustomerState, memo: Memo, watermark: float, policy: Policy) -> bool:
    """Whether records are a step past the point where they are dropped."""
    lateness, window = policy.allowed_lateness, policy.max_window
    live_from = watermark - 2 * lateness - window
    return (memo.earliest_contact < live_from - window - PRUNE_STEP
            or memo.earliest_other < live_from - policy.join_horizon - PRUNE_STEP)


def contact_verdict(c: ContactRecord, memo: Memo, watermark: float, policy: Policy) -> Verdict:
    """One contact's verdict from the memo's indexes: the same as `derive_verdicts` gives it."""
    cid = c.contact_id
    horizon = policy.join_horizon
    n_transfers = len(joined_records(memo.transfers_of.get(cid), c.t, horizon))
    found = joined_records(memo.surveys_of.get(cid), c.t, horizon)
    if len(found) > 1:
        found.sort(key=lambda sv: (sv.t, sv.event_id))
    joined = tuple(found)
    if not (memo.identified and c.outcome == "handled"):
        followed = memo.identified and is_followed(c, memo.handled, memo.everyone, policy)
        return Verdict(False, False, None, n_transfers, STATUS_NONE, (), joined,
                       followed=followed)
    handled = memo.handled
    repeat_of, repeated = scan_neighbours(c, bisect_left(handled, (c.t, cid)), handled,
                                          memo.contacts, policy)
    return participant_verdict(c, repeated, repeat_of, n_transfers, joined, watermark, policy)
