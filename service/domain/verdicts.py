"""Verdicts: what cx-stream concludes about each contact from the customer's recent contacts.

A handled contact of an identified customer is in the first-contact-resolution population.
It is a repeat when an earlier handled contact in scope (the queue's repeat window, and the
same reason or channel when the queue's rules ask) precedes it; it is unresolved when a later
contact in scope repeats it, when it was transferred (if the queue counts transfers) or when a
survey said it was not resolved; otherwise pending until its repeat window closes, then
resolved. Transfers and surveys join their contact within the join horizon.

`derive_verdicts` derives every contact's verdict from the whole state; `memo.contact_verdict`
derives one from the memo's indexes. Both find a contact's neighbours with `scan_neighbours`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from service.domain.containment import is_followed
from service.domain.counters import (
    LED_SURVEY,
    LED_TRANSFER,
    NO_REASON,
    SAID_NOTHING,
    SAID_RESOLVED,
    SAID_UNRESOLVED,
    STATUS_NONE,
    STATUS_PENDING,
    STATUS_RESOLVED,
    STATUS_UNRESOLVED,
    Counted,
    hour_of,
)
from service.domain.policy import Policy
from service.domain.records import (
    BY_ORDER,
    ContactRecord,
    CustomerState,
    SurveyRecord,
    TransferRecord,
)

REPEAT_CONTACT = "repeat_contact"
TRANSFERRED = "transferred"
SURVEY_UNRESOLVED = "survey_unresolved"
_R = TypeVar("_R", TransferRecord, SurveyRecord)
_STATUS_NAMES = {STATUS_PENDING: "pending", STATUS_RESOLVED: "resolved",
                 STATUS_UNRESOLVED: "unresolved"}


# Not frozen, never changed once built: see Counted (counters.py).
@dataclass(slots=True)
class Verdict:
    participates: bool
    is_repeat: bool
    repeat_of: str | None
    transfers: int
    status: int
    reasons: tuple[str, ...]
    surveys: tuple[SurveyRecord, ...]
    # Repeat drivers: (queue, reason, channel) of the later contact that repeats this one.
    repeated_by: tuple[str, str | None, str] | None = None
    # A self-service or abandoned contact followed within the window (domain/containment).
    followed: bool = False

    @property
    def resolution(self) -> str | None:
        return _STATUS_NAMES.get(self.status)


def _in_scope(p: ContactRecord, c: ContactRecord, policy: Policy) -> bool:
    """Whether `c` repeats the earlier contact `p` under `p`'s queue's rules."""
    rules = policy.for_queue(p.queue)
    if c.t - p.t > rules.repeat_window:
        return False
    if rules.repeat_same_reason and p.reason != c.reason:
        return False
    return not (rules.repeat_same_channel and p.channel != c.channel)


def scan_neighbours(c: ContactRecord, i: int, handled: list[tuple[float, str]],
                    contacts: dict[str, ContactRecord], policy: Policy
                    ) -> tuple[str | None, ContactRecord | None]:
    """(the contact `c` repeats, the later contact that repeats `c`): the nearest handled
    contacts in scope on each side of `c`, which is `handled[i]` (handled contacts as
    (t, contact_id), sorted), looking no further than the longest repeat window."""
    max_window = policy.max_window
    repeat_of: str | None = None
    for j in range(i - 1, -1, -1):
        pt, pid = handled[j]
        if c.t - pt > max_window:
            break
        if _in_scope(contacts[pid], c, policy):
            repeat_of = pid
            break
    repeated: ContactRecord | None = None
    for j in range(i + 1, len(handled)):
        lt, lid = handled[j]
        if lt - c.t > max_window:
            break
        later = contacts[lid]
        if _in_scope(c, later, policy):
            repeated = later
            break
    return repeat_of, repeated


def derive_verdicts(
    state: CustomerState, watermark: float, policy: Policy
) -> dict[str, Verdict]:
    """Every contact's verdict, from the whole state (all arrival orders give the same)."""
    identified = state.customer_id is not None
    contacts = state.contacts
    horizon = policy.join_horizon
    transfers: dict[str, int] = {}
    for tr in state.transfers:
        c = contacts.get(tr.contact_id)
        if c is not None and abs(tr.t - c.t) <= horizon:
            transfers[tr.contact_id] = transfers.get(tr.contact_id, 0) + 1
    surveys: dict[str, list[SurveyRecord]] = {}
    for sv in state.surveys:
        c = contacts.get(sv.contact_id)
        if c is not None and abs(sv.t - c.t) <= horizon:
            surveys.setdefault(sv.contact_id, []).append(sv)
    for found in surveys.values():
        found.sort(key=lambda s: (s.t, s.event_id))

    handled = sorted((c.t, c.contact_id) for c in contacts.values()
                     if identified and c.outcome == "handled")
    everyone = sorted(map(BY_ORDER, contacts.values())) if identified else []
    around = {cid: scan_neighbours(contacts[cid], i, handled, contacts, policy)
              for i, (_, cid) in enumerate(handled)}
    verdicts: dict[str, Verdict] = {}
    for cid, c in contacts.items():
        joined: tuple[SurveyRecord, ...] = tuple(surveys.get(cid, ()))
        n_transfers = transfers.get(cid, 0)
        near = around.get(cid)
        if near is None:  # not in the FCR population
            followed = identified and is_followed(c, handled, everyone, policy)
            verdicts[cid] = Verdict(False, False, None, n_transfers, STATUS_NONE, (), joined,
                                    followed=followed)
        else:
            verdicts[cid] = participant_verdict(c, near[1], near[0], n_transfers, joined,
                                                 watermark, policy)
    return verdicts


def joined_records(records: list[_R] | None, t: float, horizon: float) -> list[_R]:
    """The records (of one contact) within the join horizon of its time `t`."""
    return [r for r in records if abs(r.t - t) <= horizon] if records else []


def participant_verdict(c: ContactRecord, repeated: ContactRecord | None, repeat_of: str | None,
                         n_transfers: int, joined: tuple[SurveyRecord, ...], watermark: float,
                         policy: Policy) -> Verdict:
    """The verdict of a contact in the FCR population, from what was found around it."""
    rules = policy.for_queue(c.queue)
    reasons: list[str] = []
    repeated_by = None
    if repeated is not None:
        reasons.append(REPEAT_CONTACT)
        repeated_by = (repeated.queue, repeated.reason, repeated.channel)
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
                   joined, repeated_by=repeated_by)


def counted_of(c: ContactRecord, v: Verdict, identified: bool) -> Counted:
    """What a contact with this verdict adds to the counters."""
    csat = [s.csat for s in v.surveys if s.csat is not None]
    nps = [s.nps for s in v.surveys if s.nps is not None]
    ces = [s.ces for s in v.surveys if s.ces is not None]
    # What an unresolved contact led to: its repeat, else a transfer, else the survey's "no".
    led_queue = led_reason = led_channel = None
    if v.status == STATUS_UNRESOLVED:
        if v.repeated_by is not None:
            led_queue, reason, led_channel = v.repeated_by
            led_reason = reason if reason is not None else NO_REASON
        else:
            led_queue = LED_TRANSFER if TRANSFERRED in v.reasons else LED_SURVEY
    answers = [s.resolved for s in v.surveys if s.resolved is not None]  # in time order
    said = SAID_NOTHING if not answers else SAID_RESOLVED if answers[-1] else SAID_UNRESOLVED
    return Counted(
        hour=hour_of(c.t), outcome=c.outcome, queue=c.queue, channel=c.channel, agent=c.agent,
        segment=c.segment, participates=v.participates, status=v.status,
        is_repeat=v.is_repeat, transferred=v.transfers > 0, surveys=len(v.surveys),
        survey_unresolved=sum(1 for s in v.surveys if s.resolved is False),
        csat_sum=sum(csat), csat_count=len(csat),
        nps_promoters=sum(1 for n in nps if n >= 9), nps_detractors=sum(1 for n in nps if n <= 6),
        nps_count=len(nps), ces_sum=sum(ces), ces_count=len(ces),
        identified=identified,
        reason=c.reason if c.reason is not None else NO_REASON,
        led_queue=led_queue, led_reason=led_reason, led_channel=led_channel,
        caused_repeat=REPEAT_CONTACT in v.reasons, followed=v.followed, said=said,
        complaint=c.complaint,
        sentiment_milli=None if c.sentiment is None else round(c.sentiment * 1000),
        topics=tuple(dict.fromkeys(c.topics)) if c.topics else (),
    )
