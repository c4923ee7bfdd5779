"""Validation of decoded event objects against the event contract (schemas/*.schema.json).

Pure: takes what a JSON decoder produced and returns an event or a Rejection. The first
problem found is reported, with a message that names the field. The JSON Schemas in `schemas/`
state the same contract; a test runs one corpus through both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from service.domain.events import (
    CHANNELS,
    OUTCOMES,
    SURVEY_SOURCES,
    TRANSFER_KINDS,
    CallEnded,
    ContactEvent,
    EventHeader,
    EventKind,
    Rejection,
    RejectReason,
    SurveyAnswered,
    Transfer,
)

MAX_ID_LENGTH = 128
# customer_value: a value per month; the bound keeps it, in cents, an exact 64-bit integer.
MAX_CUSTOMER_VALUE = 1e12
# topics of speech and text analytics: at most this many, each 1 to MAX_TOPIC_LENGTH characters
MAX_TOPICS = 10
MAX_TOPIC_LENGTH = 64

# RFC 3339 `date-time` (section 5.6): `T`/`Z` in either case, any number of fraction digits.
# ASCII digits only, and nothing after the offset (not even a newline, which `$` would allow).
# A leap second (`:60`) is refused, as the JSON Schemas' date-time format checks refuse it.
_RFC3339_RE = re.compile(
    r"([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):([0-5][0-9])"
    r":([0-5][0-9])(?:\.([0-9]+))?(?:([Zz])|([+-])([01][0-9]|2[0-3]):([0-5][0-9]))",
    re.ASCII,
)
DEFAULT_MAX_DEPTH = 32
DEFAULT_MAX_CLOCK_SKEW = 3600.0


@dataclass(frozen=True, slots=True)
class DoorLimits:
    """Limits checked before an event is applied, beyond what the JSON Schemas state.

    `max_depth`: most levels of nested objects and arrays, the event object being level 1
    (`too_deep`). `max_clock_skew`: how far, in seconds, an event's `occurred_at` may be ahead
    of its record's Kafka timestamp (`from_future`).
    """

    max_depth: int = DEFAULT_MAX_DEPTH
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW


class _Invalid(Exception):
    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.rejection = Rejection(reason, message)


def parse_rfc3339(text: str) -> datetime | None:
    """An aware datetime from an RFC 3339 timestamp with offset, or None if it is not one (or
    names a moment outside years 1 to 9999 in UTC)."""
    parsed = _parse_rfc3339(text)
    return parsed if isinstance(parsed, datetime) else None


_OUT_OF_RANGE = "must fall within years 1 to 9999 in UTC"


def _parse_rfc3339(text: str) -> datetime | str:
    """The datetime, or what is wrong with `text`.

    Fraction digits past the sixth (microseconds) are dropped, not rounded.
    """
    match = _RFC3339_RE.fullmatch(text)
    if match is None:
        return "must be an RFC 3339 timestamp with offset"
    year = match.group(1)
    if year != "0000" and year != "0001" and year != "9999":
        # Within years 2 to 9998 every offset stays in range, and for what the pattern accepts
        # (upper-case T and Z; fraction digits past the sixth dropped) fromisoformat, in C,
        # gives the same datetime as the fields below; it refuses a day the month lacks.
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass
    _, month, day, hour, minute, second, frac, zulu, sign, off_h, off_m = match.groups()
    if zulu:
        tz = UTC
    else:
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        tz = timezone(-offset if sign == "-" else offset)
    micro = int((frac or "0")[:6].ljust(6, "0"))
    if year == "0000":
        return _OUT_OF_RANGE
    try:
        parsed = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                          micro, tz)
    except ValueError:
        return "must be an RFC 3339 timestamp with offset (no such day)"
    try:
        parsed.astimezone(UTC)
    except OverflowError:
        return _OUT_OF_RANGE
    return parsed


def nesting_exceeds(obj: Mapping[str, Any], limit: int) -> bool:
    """Whether objects and arrays nest more than `limit` levels deep (`obj` is level 1).

    Only fields holding an object or an array are walked, so an event without nested fields
    costs one type check per field.
    """
    stack: list[tuple[Any, int]] = []
    for value in obj.values():
        if type(value) is dict or type(value) is list:
            stack.append((value, 2))
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        for child in value.values() if type(value) is dict else value:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


class _Reader:
    """Reads typed fields from one event object, raising _Invalid with the field's path."""

    __slots__ = ("kind", "obj")

    def __init__(self, kind: str, obj: Mapping[str, Any]) -> None:
        self.kind = kind
        self.obj = obj

    def _fail(self, reason: RejectReason, name: str, what: str) -> _Invalid:
        return _Invalid(reason, f"{self.kind}.{name}: {what}")

    def _get(self, name: str, required: bool) -> Any:
        if name not in self.obj:
            if required:
                raise self._fail(RejectReason.MISSING_FIELD, name, "required field is missing")
            return None
        return self.obj[name]

    def string(self, name: str, *, required: bool = True, nullable: bool = False) -> str | None:
        value = self._get(name, required)
        if value is None:
            if name in self.obj and not nullable:
                raise self._fail(RejectReason.WRONG_TYPE, name, "must be a string, got null")
            return None
        if not isinstance(value, str):
            raise self._fail(
                RejectReason.WRONG_TYPE, name, f"must be a string, got {_json_type(value)}"
            )
        if not 1 <= len(value) <= MAX_ID_LENGTH:
            raise self._fail(
                RejectReason.INVALID_VALUE, name,
                f"must be 1 to {MAX_ID_LENGTH} characters, got {len(value)}",
            )
        return value

    def required_string(self, name: str) -> str:
        value = self.string(name)
        if value is None:  # string() already raised for absent or null; kept for the type
            raise self._fail(RejectReason.MISSING_FIELD, name, "required field is missing")
        return value

    def required_choice(self, name: str, allowed: tuple[str, ...]) -> str:
        value = self.choice(name, allowed)
        if value is None:
            raise self._fail(RejectReason.MISSING_FIELD, name, "required field is missing")
        return value

    def choice(self, name: str, allowed: tuple[str, ...], *, required: bool = True) -> str | None:
        value = self._get(name, required)
        if value is None:
            if name in self.obj and required:
                raise self._fail(RejectReason.WRONG_TYPE, name, "must be a string, got null")
            return None
        if not isinstance(value, str):
            raise self._fail(
                RejectReason.WRONG_TYPE, name, f"must be a string, got {_json_type(value)}"
            )
        if value not in allowed:
            raise self._fail(
                RejectReason.INVALID_VALUE, name,
                f"must be one of {', '.join(allowed)}, got {value[:40]!r}",
            )
        return value

    def timestamp(self, name: str) -> datetime:
        value = self._get(name, True)
        if not isinstance(value, str):
            raise self._fail(
                RejectReason.WRONG_TYPE, name,
                f"must be an RFC 3339 timestamp string, got {_json_type(value)}",
            )
        parsed = _parse_rfc3339(value)
        if isinstance(parsed, str):
            raise self._fail(RejectReason.BAD_TIMESTAMP, name, f"{parsed}, got {value[:40]!r}")
        return parsed

    def seconds(self, name: str) -> float:
        value = self._get(name, False)
        if value is None:
            if name in self.obj:
                raise self._fail(RejectReason.WRONG_TYPE, name, "must be a number, got null")
            return 0.0
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(
                RejectReason.WRONG_TYPE, name, f"must be a number, got {_json_type(value)}"
            )
        if value < 0:
            raise self._fail(RejectReason.INVALID_VALUE, name, f"must be >= 0, got {value}")
        return float(value)

    def amount(self, name: str, high: float) -> float | None:
        """An optional number from 0 to `high` (absent or null: None)."""
        return self.number_in(name, 0, high)

    def sentiment(self, name: str) -> float | None:
        """An optional number from -1 to 1 (absent or null: None)."""
        return self.number_in(name, -1, 1)

    def number_in(self, name: str, low: float, high: float) -> float | None:
        """An optional number from `low` to `high` (absent or null: None)."""
        value = self._get(name, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(
                RejectReason.WRONG_TYPE, name, f"must be a number, got {_json_type(value)}"
            )
        if not low <= value <= high:
            raise self._fail(RejectReason.INVALID_VALUE, name,
                             f"must be from {low:g} to {high:g}, got {value}")
        return float(value)

    def topics(self, name: str) -> tuple[str, ...] | None:
        """An optional list of at most MAX_TOPICS strings of 1 to MAX_TOPIC_LENGTH characters
        (absent or null: None)."""
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self._fail(
                RejectReason.WRONG_TYPE, name, f"must be an array, got {_json_type(value)}"
            )
        if len(value) > MAX_TOPICS:
            raise self._fail(RejectReason.INVALID_VALUE, name,
                             f"must hold at most {MAX_TOPICS} topics, got {len(value)}")
        for i, topic in enumerate(value):
            if not isinstance(topic, str):
                raise self._fail(RejectReason.WRONG_TYPE, f"{name}[{i}]",
                                 f"must be a string, got {_json_type(topic)}")
            if not 1 <= len(topic) <= MAX_TOPIC_LENGTH:
                raise self._fail(RejectReason.INVALID_VALUE, f"{name}[{i}]",
                                 f"must be 1 to {MAX_TOPIC_LENGTH} characters, got {len(topic)}")
        return tuple(value)

    def score(self, name: str, low: int, high: int) -> int | None:
        value = self._get(name, False)
        if value is None:
            if name in self.obj:
                raise self._fail(RejectReason.WRONG_TYPE, name, "must be an integer, got null")
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(
                RejectReason.WRONG_TYPE, name, f"must be an integer, got {_json_type(value)}"
            )
        if not low <= value <= high:
            raise self._fail(
                RejectReason.INVALID_VALUE, name, f"must be from {low} to {high}, got {value}"
            )
        return value

    def boolean(self, name: str) -> bool | None:
        value = self._get(name, False)
        if value is None:
            if name in self.obj:
                raise self._fail(RejectReason.WRONG_TYPE, name, "must be a boolean, got null")
            return None
        if not isinstance(value, bool):
            raise self._fail(
                RejectReason.WRONG_TYPE, name, f"must be a boolean, got {_json_type(value)}"
            )
        return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _header(r: _Reader) -> EventHeader:
    return EventHeader(
        event_id=r.required_string("event_id"),
        occurred_at=r.timestamp("occurred_at"),
        contact_id=r.required_string("contact_id"),
        customer_id=r.string("customer_id", nullable=True),
    )


def _call_ended(r: _Reader) -> CallEnded:
    header = _header(r)
    started_at = r.timestamp("started_at")
    channel = r.required_choice("channel", CHANNELS)
    queue = r.required_string("queue")
    outcome = r.required_choice("outcome", OUTCOMES)
    if outcome == "handled":
        if r.obj.get("agent_id") is None:
            raise r._fail(
                RejectReason.MISSING_FIELD, "agent_id", "required when outcome is handled"
            )
        agent_id = r.string("agent_id")
    else:
        if r.obj.get("agent_id") is not None:
            raise r._fail(
                RejectReason.INVALID_VALUE, "agent_id",
                f"must be null when outcome is {outcome}",
            )
        agent_id = None
    reason = r.string("reason", required=False, nullable=True)
    segment = r.string("segment", required=False, nullable=True)
    wait_seconds = r.seconds("wait_seconds")
    hold_seconds = r.seconds("hold_seconds")
    talk_seconds = r.seconds("talk_seconds")
    customer_value = r.amount("customer_value", MAX_CUSTOMER_VALUE)
    sentiment = r.sentiment("sentiment")
    complaint = r.boolean("complaint")
    topics = r.topics("topics")
    if started_at > header.occurred_at:
        raise r._fail(
            RejectReason.STARTED_AFTER_OCCURRED, "started_at", "must not be after occurred_at"
        )
    return CallEnded(
        header, started_at, channel, queue, outcome, agent_id, reason, segment,
        wait_seconds, hold_seconds, talk_seconds, r.obj, customer_value, sentiment, complaint,
        topics,
    )


def _transfer(r: _Reader) -> Transfer:
    header = _header(r)
    return Transfer(
        header,
        from_queue=r.required_string("from_queue"),
        to_queue=r.required_string("to_queue"),
        from_agent=r.string("from_agent", required=False, nullable=True),
        to_agent=r.string("to_agent", required=False, nullable=True),
        transfer_kind=r.choice("kind", TRANSFER_KINDS, required=False),
        fields=r.obj,
    )


_SURVEY_ANSWERS = ("csat", "nps", "ces", "resolved")


def _survey_answered(r: _Reader) -> SurveyAnswered:
    header = _header(r)
    source = r.required_choice("source", SURVEY_SOURCES)
    survey = SurveyAnswered(
        header,
        source=source,
        csat=r.score("csat", 1, 5),
        nps=r.score("nps", 0, 10),
        ces=r.score("ces", 1, 7),
        resolved=r.boolean("resolved"),
        fields=r.obj,
    )
    if not any(name in r.obj for name in _SURVEY_ANSWERS):
        raise _Invalid(
            RejectReason.MISSING_FIELD,
            "survey-answered.csat: at least one of csat, nps, ces, resolved is required",
        )
    return survey


_BUILDERS: dict[str, Callable[[_Reader], ContactEvent]] = {
    EventKind.CALL_ENDED: _call_ended,
    EventKind.TRANSFER: _transfer,
    EventKind.SURVEY_ANSWERED: _survey_answered,
}


def validate_event(kind: str, obj: Any, *, max_depth: int = DEFAULT_MAX_DEPTH
                   ) -> ContactEvent | Rejection:
    """Validate one decoded event of `kind` (`call-ended`, `transfer`, `survey-answered`)."""
    builder = _BUILDERS.get(kind)
    if builder is None:
        return Rejection(RejectReason.UNKNOWN_TOPIC, f"no event kind {kind!r}")
    if not isinstance(obj, dict):
        got = _json_type(obj)
        message = f"{kind}: the event must be a JSON object, got {got}"
        return Rejection(RejectReason.NOT_OBJECT, message)
    if nesting_exceeds(obj, max_depth):
        return Rejection(RejectReason.TOO_DEEP,
                         f"{kind}: objects and arrays nest more than {max_depth} levels deep")
    try:
        return builder(_Reader(kind, obj))
    except _Invalid as exc:
        return exc.rejection


def expected_key(event: ContactEvent) -> str:
    """The message key the contract requires: the customer_id, or the contact_id of an
    unidentified caller. It decides the partition, and so where the customer's state lives."""
    header = event.header
    return header.customer_id if header.customer_id is not None else header.contact_id


def check_record(event: ContactEvent, key: bytes | None, timestamp_ms: int | None,
                 limits: DoorLimits) -> Rejection | None:
    """What is wrong with a valid event as the record it came in: a key other than
    `expected_key` (`key_mismatch`), or an event time more than `limits.max_clock_skew` ahead of
    the record's Kafka timestamp (`from_future`). None when nothing is."""
    kind = event.kind.value
    wanted = expected_key(event)
    if key != wanted.encode():
        field = "customer_id" if event.header.customer_id is not None else "contact_id"
        shown = "no key" if key is None else f"key {key[:40].decode('utf-8', 'replace')!r}"
        return Rejection(RejectReason.KEY_MISMATCH,
                         f"{kind}.{field}: the message has {shown}, not the {field} "
                         f"{wanted[:40]!r}")
    if timestamp_ms is not None and timestamp_ms > 0:
        ahead = event.header.occurred_at.timestamp() - timestamp_ms / 1000
        if ahead > limits.max_clock_skew:
            return Rejection(RejectReason.FROM_FUTURE,
                             f"{kind}.occurred_at: {ahead:.0f}s ahead of the message's Kafka "
                             f"timestamp (at most {limits.max_clock_skew:.0f}s allowed)")
    return None
