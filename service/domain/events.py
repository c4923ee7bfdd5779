"""The three input events of a contact centre, as validated values.

Each event keeps the JSON object it came from (`fields`) so that fields outside the contract
are carried through to the outputs unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class EventKind(StrEnum):
    CALL_ENDED = "call-ended"
    TRANSFER = "transfer"
    SURVEY_ANSWERED = "survey-answered"


CHANNELS = ("voice", "chat", "email", "sms", "social", "video")
OUTCOMES = ("handled", "abandoned", "self_service")
TRANSFER_KINDS = ("warm", "cold", "blind")
SURVEY_SOURCES = ("ivr", "sms", "email", "web", "third_party")


class RejectReason(StrEnum):
    """Why an event was dead-lettered. A closed set: it is a metric label."""

    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_VALUE = "invalid_value"
    BAD_TIMESTAMP = "bad_timestamp"
    STARTED_AFTER_OCCURRED = "started_after_occurred"
    UNKNOWN_TOPIC = "unknown_topic"
    TOO_LATE = "too_late"
    TOO_DEEP = "too_deep"
    KEY_MISMATCH = "key_mismatch"
    FROM_FUTURE = "from_future"
    PROCESSING_ERROR = "processing_error"


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event the service will not apply: a reason code and a message naming the field."""

    reason: RejectReason
    message: str


# Not frozen, never changed once built: see Counted (counters.py).
@dataclass(slots=True)
class EventHeader:
    event_id: str
    occurred_at: datetime
    contact_id: str
    customer_id: str | None


# Not frozen, never changed once built: see Counted (counters.py).
@dataclass(slots=True)
class CallEnded:
    header: EventHeader
    started_at: datetime
    channel: str
    queue: str
    outcome: str
    agent_id: str | None
    reason: str | None
    segment: str | None
    wait_seconds: float
    hold_seconds: float
    talk_seconds: float
    fields: Mapping[str, Any]
    # The customer's value per month (e.g. ARPU), when the event carries it.
    customer_value: float | None = None
    # Speech and text analytics, when the event carries them: overall customer sentiment
    # (-1 to 1), whether the customer complained or asked to escalate, topics detected.
    sentiment: float | None = None
    complaint: bool | None = None
    topics: tuple[str, ...] | None = None

    kind = EventKind.CALL_ENDED


# Not frozen, never changed once built: see Counted (counters.py).
@dataclass(slots=True)
class Transfer:
    header: EventHeader
    from_queue: str
    to_queue: str
    from_agent: str | None
    to_agent: str | None
    transfer_kind: str | None
    fields: Mapping[str, Any]

    kind = EventKind.TRANSFER


# Not frozen, never changed once built: see Counted (counters.py).
@dataclass(slots=True)
class SurveyAnswered:
    header: EventHeader
    source: str
    csat: int | None
    nps: int | None
    ces: int | None
    resolved: bool | None
    fields: Mapping[str, Any]

    kind = EventKind.SURVEY_ANSWERED


ContactEvent = CallEnded | Transfer | SurveyAnswered
