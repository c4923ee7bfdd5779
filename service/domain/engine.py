"""The fold at the heart of cx-stream: (customer state, event) -> (new state, outputs).

`apply_event` adds an event to the customer's state (or recognises its event_id as seen).
`settle` (settle.py) derives every verdict (verdicts.py) from the whole recent state at the
current watermark, compares it with what was last published, and returns what changed;
the memo (memo.py) keeps what it derived so the next settle redoes only what changed. `fold`
is the two in one step. This module also keeps the names the service layer uses from them.

Bounds (W = longest repeat window, L = allowed lateness, H = W + L the join horizon): events
older than `watermark - L` are too late. A contact more than `2L + W` behind the watermark can
no longer change (it is sealed); perception signals older than `watermark - 2L` are folded into
the snapshot; records are dropped once nothing live can depend on them.
"""

from __future__ import annotations

from service.domain.curve import perception_curve
from service.domain.events import CallEnded, ContactEvent, SurveyAnswered, Transfer
from service.domain.memo import PRUNE_STEP
from service.domain.policy import Policy
from service.domain.records import ContactRecord, CustomerState, SurveyRecord, TransferRecord
from service.domain.settle import (
    ContactUpdate,
    CustomerAlert,
    Settled,
    alert_payload,
    enriched_view,
    rfc3339,
    settle,
)
from service.domain.storage_names import customer_state, unidentified_state
from service.domain.value import remember_value
from service.domain.verdicts import Verdict, derive_verdicts

__all__ = [
    "PRUNE_STEP",
    "ContactUpdate",
    "CustomerAlert",
    "Settled",
    "Verdict",
    "alert_payload",
    "apply_event",
    "derive_verdicts",
    "enriched_view",
    "fold",
    "held_apart",
    "is_too_late",
    "new_state",
    "overflows",
    "perception_curve",
    "rfc3339",
    "settle",
    "state_key",
]


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
        if event.customer_value is not None:
            remember_value(state, record, event.customer_value)
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


def fold(
    state: CustomerState | None, event: ContactEvent, watermark: float, policy: Policy
) -> tuple[CustomerState, Settled, bool]:
    """One event in: the new state, what changed, and whether the event was new."""
    if state is None:
        state = new_state(event)
    applied = apply_event(state, event)
    return state, settle(state, watermark, policy), applied

