"""What cx-stream remembers of one customer: recent contacts, transfers and surveys, a perception
snapshot, and what it last said about each contact.

The state is plain data with a compact dict form (`to_dict` / `from_dict`) so an adapter can
store it anywhere. Event times are seconds since the epoch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from service.domain.counters import STATUS_UNRESOLVED
from service.domain.events import CallEnded, SurveyAnswered, Transfer

if TYPE_CHECKING:
    from service.domain.memo import Memo

# Fields outside the contract are kept in the state up to about this many bytes of JSON per
# contact: whole fields, in the event's order, each one that still fits; the names of those
# left out are kept (`EXTRA_DROPPED`), so every version of the enriched contact says what is
# missing (the input topic keeps the whole event).
MAX_EXTRA_BYTES = 2048
EXTRA_DROPPED = "extra_fields_dropped"

_STANDARD_CALL_FIELDS = frozenset({
    "event_id", "occurred_at", "contact_id", "customer_id", "started_at", "channel", "queue",
    "outcome", "agent_id", "reason", "segment", "wait_seconds", "hold_seconds", "talk_seconds",
    "sentiment", "complaint", "topics",  # kept as the record's own (speech analytics)
})


@dataclass(slots=True)
class ContactRecord:
    contact_id: str
    event_id: str
    t: float
    occurred_at: str
    started_at: str
    channel: str
    queue: str
    outcome: str
    agent: str | None
    reason: str | None
    segment: str | None
    wait: float
    hold: float
    talk: float
    extra: dict[str, Any] = field(default_factory=dict)
    # Speech and text analytics of the contact, when its event carried them
    sentiment: float | None = None
    complaint: bool | None = None
    topics: tuple[str, ...] | None = None

    @staticmethod
    def of(event: CallEnded) -> ContactRecord:
        f = event.fields
        return ContactRecord(
            contact_id=event.header.contact_id,
            event_id=event.header.event_id,
            t=event.header.occurred_at.timestamp(),
            occurred_at=str(f["occurred_at"]),
            started_at=str(f["started_at"]),
            channel=event.channel,
            queue=event.queue,
            outcome=event.outcome,
            agent=event.agent_id,
            reason=event.reason,
            segment=event.segment,
            wait=event.wait_seconds,
            hold=event.hold_seconds,
            talk=event.talk_seconds,
            extra=_bounded_extra(f),
            sentiment=event.sentiment,
            complaint=event.complaint,
            topics=event.topics,
        )

    def order(self) -> tuple[float, str]:
        """Contacts are ordered by event time, ties broken by contact_id."""
        return (self.t, self.contact_id)

    def to_list(self) -> list[Any]:
        out = [self.contact_id, self.event_id, self.t, self.occurred_at, self.started_at,
               self.channel, self.queue, self.outcome, self.agent, self.reason, self.segment,
               self.wait, self.hold, self.talk, self.extra or None]
        if self.sentiment is not None or self.complaint is not None or self.topics is not None:
            out += [self.sentiment, self.complaint,
                    None if self.topics is None else list(self.topics)]
        return out

    @staticmethod
    def from_list(v: list[Any]) -> ContactRecord:
        voice = v[15:18] if len(v) > 15 else (None, None, None)  # written only when any is set
        return ContactRecord(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10],
                             v[11], v[12], v[13], v[14] or {}, voice[0], voice[1],
                             None if voice[2] is None else tuple(voice[2]))


# `ContactRecord.order` as a key function written in C: (t, contact_id). The settle of a
# customer looks for its latest contact among all it holds; this saves a Python call each.
BY_ORDER = attrgetter("t", "contact_id")


def _bounded_extra(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The event's fields outside the contract, up to MAX_EXTRA_BYTES of JSON."""
    extra = {k: v for k, v in fields.items() if k not in _STANDARD_CALL_FIELDS}
    if not extra:
        return extra
    budget = MAX_EXTRA_BYTES
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for name, value in extra.items():
        size = len(name) + _json_size(value) + 4
        if size <= budget:
            kept[name] = value
            budget -= size
        else:
            dropped.append(name)
    if dropped:
        kept[EXTRA_DROPPED] = [n[:128] for n in dropped[:16]]
    return kept


def _json_size(value: Any) -> int:
    if value is None or isinstance(value, bool | int | float):
        return 8
    if isinstance(value, str):
        return len(value) + 2
    return len(json.dumps(value, ensure_ascii=False, default=str))


@dataclass(slots=True)
class TransferRecord:
    contact_id: str
    event_id: str
    t: float
    from_queue: str
    to_queue: str

    @staticmethod
    def of(event: Transfer) -> TransferRecord:
        return TransferRecord(event.header.contact_id, event.header.event_id,
                              event.header.occurred_at.timestamp(), event.from_queue,
                              event.to_queue)

    def to_list(self) -> list[Any]:
        return [self.contact_id, self.event_id, self.t, self.from_queue, self.to_queue]

    @staticmethod
    def from_list(v: list[Any]) -> TransferRecord:
        return TransferRecord(*v)


@dataclass(slots=True)
class SurveyRecord:
    contact_id: str
    event_id: str
    t: float
    answered_at: str
    csat: int | None
    nps: int | None
    ces: int | None
    resolved: bool | None

    @staticmethod
    def of(event: SurveyAnswered) -> SurveyRecord:
        return SurveyRecord(event.header.contact_id, event.header.event_id,
                            event.header.occurred_at.timestamp(),
                            str(event.fields["occurred_at"]), event.csat, event.nps, event.ces,
                            event.resolved)

    def to_list(self) -> list[Any]:
        return [self.contact_id, self.event_id, self.t, self.answered_at, self.csat, self.nps,
                self.ces, self.resolved]

    @staticmethod
    def from_list(v: list[Any]) -> SurveyRecord:
        return SurveyRecord(*v)


@dataclass(slots=True)
class Emitted:
    """What was last published about a contact: its version, a digest of the view, and the
    counter key its counts were added under (so a change can be retracted exactly)."""

    version: int
    digest: int
    counted: tuple[Any, ...]
    perception: tuple[float, float] | None = None
    # A checksum of everything the view and counts derive from (record, verdict, perception,
    # policy): when it is unchanged the contact is skipped without rebuilding its view.
    basis: int | None = None
    # The same inputs as a tuple, while the state stays in memory (not stored): comparing it
    # is cheaper than computing the checksum.
    inputs: tuple[Any, ...] | None = field(default=None, compare=False, repr=False)

    def checksum(self) -> int | None:
        """`basis`, computed from `inputs` the first time the contact is stored after a change."""
        if self.basis is None and self.inputs is not None:
            self.basis = basis_of(self.inputs)
        return self.basis


def basis_of(inputs: tuple[Any, ...]) -> int:
    """A 64-bit checksum of what a contact's view and counts are derived from: its record's
    event_id (a record never changes under one event_id: a correction is a new event), its
    verdict, the survey event_ids, its perception and the policy version."""
    text = repr(inputs).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)


@dataclass(slots=True)
class PerceptionSnapshot:
    """The curve folded up to `t`: signals before it can no longer change."""

    t: float | None = None
    score: float | None = None
    at_risk: bool = False
    points: list[tuple[float, float, str]] = field(default_factory=list)
    recent: list[tuple[float, float]] = field(default_factory=list)
    last_signal: float | None = None


HISTORY_DAYS = 90  # the horizon of a customer's contact counts, in UTC days
HISTORY_CONTACTS = 5  # the latest contacts whose verdicts the history keeps


@dataclass(slots=True)
class CustomerHistory:
    """What is kept of a customer's contacts once their records are dropped: bounded and
    compact, so a customer idle for weeks is still known (docs/api.md).

    Only dropped contacts are here; an answer adds the contacts still held.
    """

    first: float | None = None  # event time of the earliest dropped contact
    last: float | None = None  # and of the latest
    # [UTC day number, contacts, unresolved] per day with a dropped contact, ascending days,
    # none older than HISTORY_DAYS before the day of the watermark that dropped them.
    days: list[list[int]] = field(default_factory=list)
    # The latest dropped contacts, newest first: [contact_id, t, queue, channel, outcome,
    # status] with the status (counters.STATUS_*) last published for it.
    contacts: list[list[Any]] = field(default_factory=list)
    # The last at_risk_entered alert and the at_risk_left that followed it (None while still
    # at risk), each [at, score, drop, causes] as published on customer-alerts.
    entered: list[Any] | None = None
    left: list[Any] | None = None
    segment: str | None = None  # of the latest dropped contact: the curve's baseline when idle

    def is_empty(self) -> bool:
        return self.first is None and self.entered is None

    def add_contact(self, c: ContactRecord, status: int) -> None:
        """A contact whose record is dropped, with its final status."""
        t = c.t
        self.first = t if self.first is None else min(self.first, t)
        if self.last is None or t >= self.last:
            self.last, self.segment = t, c.segment
        day = int(t // 86400)
        unresolved = int(status == STATUS_UNRESOLVED)
        days = self.days
        i = len(days)
        while i and days[i - 1][0] > day:
            i -= 1
        if i and days[i - 1][0] == day:
            days[i - 1][1] += 1
            days[i - 1][2] += unresolved
        else:
            days.insert(i, [day, 1, unresolved])
        kept = self.contacts
        entry = [c.contact_id, t, c.queue, c.channel, c.outcome, status]
        key = (t, c.contact_id)
        j = 0
        while j < len(kept) and (kept[j][1], kept[j][0]) > key:
            j += 1
        if j < HISTORY_CONTACTS:
            kept.insert(j, entry)
            del kept[HISTORY_CONTACTS:]

    def trim(self, watermark: float) -> None:
        """Forget the day counts that left the horizon."""
        oldest = int(watermark // 86400) - HISTORY_DAYS + 1
        days = self.days
        if days and days[0][0] < oldest:
            self.days = [d for d in days if d[0] >= oldest]

    def to_list(self) -> list[Any]:
        return [self.first, self.last, self.days, self.contacts, self.entered, self.left,
                self.segment]

    @staticmethod
    def from_list(v: list[Any]) -> CustomerHistory:
        return CustomerHistory(v[0], v[1], [list(d) for d in v[2]], [list(c) for c in v[3]],
                               v[4], v[5], v[6])


@dataclass(slots=True)
class CustomerState:
    customer_id: str | None
    contacts: dict[str, ContactRecord] = field(default_factory=dict)
    transfers: list[TransferRecord] = field(default_factory=list)
    surveys: list[SurveyRecord] = field(default_factory=list)
    superseded: list[tuple[str, float]] = field(default_factory=list)
    emitted: dict[str, Emitted] = field(default_factory=dict)
    snapshot: PerceptionSnapshot = field(default_factory=PerceptionSnapshot)
    alerted_at_risk: bool = False
    alert_version: int = 0
    live_from: float | None = None  # contacts before this are context only (see settle)
    band: int | None = None  # perception band (score // 10) last counted for this customer
    joins: tuple[int, int, int, int] = (0, 0, 0, 0)  # surveys joined/held, transfers joined/held
    # More contacts in the window than a customer can have (a shared placeholder id, a test
    # line, a bot): its further contacts are held apart, as unidentified callers' are.
    noisy: bool = False
    # The customer_id carried by the one contact of this state, held apart from its noisy
    # customer (this state is then unidentified: customer_id is None).
    alias: str | None = None
    history: CustomerHistory | None = None  # made when a first record is dropped or alert sent
    # Customer value (domain/value.py): the latest `customer_value` a contact carried, as
    # (t, contact_id, event_id, value) of that contact; and, while the customer is at risk,
    # (segment label, value in cents) it is counted under in the partition's value at risk.
    value: tuple[float, str, str, float] | None = None
    risk: tuple[str, int] | None = None
    # A checksum of the work-list entry last written for this customer; never stored.
    risk_digest: int | None = field(default=None, compare=False, repr=False)
    # What the engine derived from this state, kept while the object lives; never stored.
    memo: Memo | None = field(default=None, compare=False, repr=False)

    def seen(self, event_id: str) -> bool:
        if any(e == event_id for e, _ in self.superseded):
            return True
        if any(c.event_id == event_id for c in self.contacts.values()):
            return True
        return any(r.event_id == event_id for r in self.transfers) or any(
            r.event_id == event_id for r in self.surveys
        )

    def is_empty(self) -> bool:
        return not (self.contacts or self.transfers or self.surveys)

    def to_dict(self) -> dict[str, Any]:
        snap = self.snapshot
        out: dict[str, Any] = {
            "v": STATE_FORMAT,
            "cu": self.customer_id,
            "c": [c.to_list() for c in self.contacts.values()],
            "t": [r.to_list() for r in self.transfers],
            "s": [r.to_list() for r in self.surveys],
            "x": [list(x) for x in self.superseded],
            "e": {k: [e.version, e.digest, list(e.counted),
                      None if e.perception is None else list(e.perception), e.checksum()]
                  for k, e in self.emitted.items()},
            "p": [snap.t, snap.score, snap.at_risk, [list(p) for p in snap.points],
                  [list(r) for r in snap.recent], snap.last_signal],
            "a": [self.alerted_at_risk, self.alert_version],
            "l": self.live_from,
            "b": self.band,
            "j": list(self.joins),
            **({"n": True} if self.noisy else {}),
            **({"k": self.alias} if self.alias is not None else {}),
        }
        if self.history is not None and not self.history.is_empty():
            out["h"] = self.history.to_list()  # nothing dropped yet: no bytes spent on it
        if self.value is not None:
            out["cv"] = list(self.value)
        if self.risk is not None:
            out["rv"] = list(self.risk)  # read by erase_partition.lua
        return out

    @staticmethod
    def from_dict(d: dict[str, Any]) -> CustomerState:
        if d.get("v") != STATE_FORMAT:
            d = _upgrade(d)
        t, score, at_risk, points, recent, last_signal = d["p"]
        contacts = [ContactRecord.from_list(v) for v in d["c"]]
        return CustomerState(
            customer_id=d["cu"],
            contacts={c.contact_id: c for c in contacts},
            transfers=[TransferRecord.from_list(v) for v in d["t"]],
            surveys=[SurveyRecord.from_list(v) for v in d["s"]],
            superseded=[(x[0], x[1]) for x in d["x"]],
            emitted={k: Emitted(v[0], v[1], tuple(v[2]),
                                None if v[3] is None else (v[3][0], v[3][1]), v[4])
                     for k, v in d["e"].items()},
            snapshot=PerceptionSnapshot(t, score, at_risk, [(p[0], p[1], p[2]) for p in points],
                                        [(r[0], r[1]) for r in recent], last_signal),
            alerted_at_risk=d["a"][0],
            alert_version=d["a"][1],
            live_from=d["l"],
            band=d["b"],
            joins=tuple(d["j"]),
            noisy=d.get("n", False),  # written only when true
            alias=d.get("k"),  # written only when set
            history=CustomerHistory.from_list(d["h"]) if "h" in d else None,  # once not empty
            value=_value_of(d.get("cv")),
            risk=None if d.get("rv") is None else (d["rv"][0], d["rv"][1]),
        )


def _value_of(v: list[Any] | None) -> tuple[float, str, str, float] | None:
    return None if v is None else (v[0], v[1], v[2], v[3])


# The format `CustomerState.to_dict` writes. States written before the format carried a
# version ("v") are read through `_upgrade`.
STATE_FORMAT = 1


def _upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """A state written before format 1 in format 1's shape, with the values it was read as.

    Before format 1: the fields "l" (live_from), "b" (band) and "j" (joins) could be missing;
    an entry of "e" could lack the checksum of its inputs (such a contact's view is then
    compared by digest when it is next settled); the snapshot's drop history ("p"[4]) kept
    every entry, where format 1 keeps only those not dominated by a later, higher score.
    """
    d = dict(d)
    d.setdefault("l", None)
    d.setdefault("b", None)
    d.setdefault("j", (0, 0, 0, 0))
    d["e"] = {k: v if len(v) > 4 else [*v, None] for k, v in d["e"].items()}
    p = list(d["p"])
    recent: list[Any] = []
    for entry in p[4]:  # drop the entries a later, higher or equal score dominates
        while recent and recent[-1][1] <= entry[1]:
            recent.pop()
        recent.append(entry)
    p[4] = recent
    d["p"] = p
    d["v"] = STATE_FORMAT
    return d
