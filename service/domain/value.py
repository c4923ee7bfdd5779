"""Customer value and the at-risk work list: what a retention team needs to call the most
valuable customers at risk first.

A customer's value is the latest `customer_value` one of their contacts carried (the latest by
event time, then contact_id, then event_id, so any arrival order gives the same one), else the
default of their segment (CX_SEGMENT_VALUES). While a customer is at risk they are counted in
their partition's value at risk (in cents, so sums stay exact) and have an entry in the
partition's work list; both are changed only by the difference to what was counted before.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.domain.counters import STATUS_PENDING, STATUS_RESOLVED, STATUS_UNRESOLVED
from service.domain.policy import Policy
from service.domain.records import BY_ORDER, ContactRecord, CustomerState

LAST_CONTACTS = 3  # the latest contacts a work-list entry shows
NO_SEGMENT = "none"  # the segment label of customers whose contacts carried none
ORDERS = ("value", "score", "since")
_STATUS = {STATUS_PENDING: "pending", STATUS_RESOLVED: "resolved",
           STATUS_UNRESOLVED: "unresolved"}


def cents(value: float) -> int:
    """A value in cents (rounded half to even), exact in a 64-bit integer below 1e12."""
    return round(value * 100)


def remember_value(state: CustomerState, record: ContactRecord, value: float) -> None:
    """Keep `value` when its contact is the latest to carry one."""
    key = (record.t, record.contact_id, record.event_id)
    known = state.value
    if known is None or key > (known[0], known[1], known[2]):
        state.value = (record.t, record.contact_id, record.event_id, value)


def segment_of(state: CustomerState) -> str | None:
    """The segment of the customer's latest contact (the latest dropped one when none held)."""
    latest = max(state.contacts.values(), key=BY_ORDER, default=None)
    if latest is not None:
        return latest.segment
    return state.history.segment if state.history is not None else None


def customer_value(state: CustomerState, policy: Policy) -> float:
    """The latest known value of the customer, else their segment's default."""
    if state.value is not None:
        return state.value[3]
    return policy.perception.value_for(segment_of(state))


@dataclass(frozen=True, slots=True)
class RiskEntry:
    """One customer of the at-risk work list, as the store keeps and the API serves it."""

    customer_id: str
    segment: str
    value: float
    score: float
    since: float  # when the customer entered at-risk (the alert's `at`)
    drop: float
    causes: tuple[str, ...]  # the latest signals that lowered the score, oldest first
    contacts: tuple[tuple[str, float, str, str, str, str], ...]  # newest first

    def to_json(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id, "segment": self.segment, "value": self.value,
            "score": self.score, "since": _rfc3339(self.since), "drop": self.drop,
            "cause": self.causes[-1] if self.causes else None, "causes": list(self.causes),
            "last_contacts": [
                {"contact_id": c[0], "occurred_at": _rfc3339(c[1]), "queue": c[2], "channel": c[3],
                 "outcome": c[4], "resolution": c[5]} for c in self.contacts],
        }

    def sort_scores(self) -> tuple[int, float, float]:
        """The entry's place in each of ORDERS (ascending, ties by customer_id): value
        highest first, score lowest first, longest at risk first."""
        return (-cents(self.value), self.score, self.since)


def last_contacts(state: CustomerState, statuses: dict[str, int]
                  ) -> tuple[tuple[str, float, str, str, str, str], ...]:
    """The customer's latest contacts, newest first: held ones, then dropped ones."""
    held = sorted(state.contacts.values(), key=BY_ORDER, reverse=True)
    out = [(c.contact_id, c.t, c.queue, c.channel, c.outcome,
            _STATUS.get(statuses.get(c.contact_id, -1), "none"))
           for c in held[:LAST_CONTACTS]]
    if len(out) < LAST_CONTACTS and state.history is not None:
        for row in state.history.contacts[:LAST_CONTACTS - len(out)]:
            out.append((row[0], row[1], row[2], row[3], row[4], _STATUS.get(row[5], "none")))
    return tuple(out)


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")
