"""Small builders of valid events for the fold's tests (times in hours from a fixed origin)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from service.domain.events import CallEnded, ContactEvent, Rejection, SurveyAnswered, Transfer
from service.domain.validation import validate_event

ORIGIN = datetime(2026, 3, 2, tzinfo=UTC)
H = 3600.0
DAY = 86400.0


def at(hours: float) -> str:
    return (ORIGIN + timedelta(hours=hours)).isoformat().replace("+00:00", "Z")


def ts(hours: float) -> float:
    return (ORIGIN + timedelta(hours=hours)).timestamp()


def _valid(kind: str, obj: dict[str, Any]) -> ContactEvent:
    event = validate_event(kind, obj)
    assert not isinstance(event, Rejection), event
    return event


def call(contact: str, hours: float, customer: str | None = "cust-1", *, queue: str = "billing",
         outcome: str = "handled", channel: str = "voice", reason: str | None = None,
         segment: str | None = None, wait: float = 30.0, hold: float = 0.0,
         event_id: str | None = None, **extra: Any) -> CallEnded:
    event = _valid("call-ended", {
        "event_id": event_id or f"{contact}-ended", "occurred_at": at(hours),
        "contact_id": contact, "customer_id": customer, "started_at": at(hours - 0.1),
        "channel": channel, "queue": queue, "outcome": outcome,
        "agent_id": "agent-1" if outcome == "handled" else None, "reason": reason,
        "segment": segment, "wait_seconds": wait, "hold_seconds": hold, **extra,
    })
    assert isinstance(event, CallEnded)
    return event


def transfer(contact: str, hours: float, customer: str | None = "cust-1",
             event_id: str | None = None) -> Transfer:
    event = _valid("transfer", {
        "event_id": event_id or f"{contact}-transfer", "occurred_at": at(hours),
        "contact_id": contact, "customer_id": customer, "from_queue": "billing",
        "to_queue": "tech",
    })
    assert isinstance(event, Transfer)
    return event


def survey(contact: str, hours: float, customer: str | None = "cust-1", *,
           resolved: bool | None = None, csat: int | None = None, nps: int | None = None,
           ces: int | None = None, event_id: str | None = None) -> SurveyAnswered:
    answers = {k: v for k, v in
               {"resolved": resolved, "csat": csat, "nps": nps, "ces": ces}.items()
               if v is not None}
    event = _valid("survey-answered", {
        "event_id": event_id or f"{contact}-survey-{hours}", "occurred_at": at(hours),
        "contact_id": contact, "customer_id": customer, "source": "sms", **answers,
    })
    assert isinstance(event, SurveyAnswered)
    return event
