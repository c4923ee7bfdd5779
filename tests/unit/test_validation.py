from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from service.adapters.codec import decode_event
from service.domain.events import CallEnded, Rejection, RejectReason, SurveyAnswered
from service.domain.validation import (
    DoorLimits,
    check_record,
    nesting_exceeds,
    parse_rfc3339,
    validate_event,
)

CALL = {
    "event_id": "e1", "occurred_at": "2026-11-24T10:00:00Z", "contact_id": "c1",
    "customer_id": "u1", "started_at": "2026-11-24T09:50:00Z", "channel": "chat",
    "queue": "billing", "outcome": "handled", "agent_id": "a1",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-24T10:00:00Z", datetime(2026, 11, 24, 10, tzinfo=UTC)),
        ("2026-11-24T10:00:00+02:30",
         datetime(2026, 11, 24, 10, tzinfo=timezone(timedelta(hours=2, minutes=30)))),
        ("2026-11-24T10:00:00.5-01:00",
         datetime(2026, 11, 24, 10, 0, 0, 500000, tzinfo=timezone(timedelta(hours=-1)))),
        ("2024-02-29T00:00:00Z", datetime(2024, 2, 29, tzinfo=UTC)),
        ("2026-11-24 10:00:00Z", None),
        ("2026-11-24T10:00Z", None),
        ("2023-02-29T00:00:00Z", None),
        ("2026-11-24T10:00:00+2:00", None),
        ("2026-11-24T10:00:60Z", None),  # a leap second: refused, as the schemas do
        ("2026-11-24t10:00:00z", datetime(2026, 11, 24, 10, tzinfo=UTC)),
        ("2026-11-24T10:00:00.123456789012+00:00",
         datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-24T10:00:00.9999999Z", datetime(2026, 11, 24, 10, 0, 0, 999999, tzinfo=UTC)),
        ("2026-11-24T10:00:00Z\n", None),
        ("2026-11-24T10:00:00Z ", None),
        ("\u0662\u0660\u0662\u0666-11-24T10:00:00Z", None),
        ("2026-11-24T10:00:00.Z", None),
        ("0001-01-01T00:00:00+23:59", None),  # year 0 in UTC
        ("9999-12-31T23:59:59-23:59", None),  # year 10000 in UTC
        ("0000-06-01T00:00:00Z", None),
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
        ("9999-12-31T23:59:59.999999Z", datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("0001-01-01T23:59:00+23:59",
         datetime(1, 1, 1, 23, 59, tzinfo=timezone(timedelta(hours=23, minutes=59)))),
    ],
)
def test_rfc3339(text: str, expected: datetime | None) -> None:
    assert parse_rfc3339(text) == expected


def _rfc3339_by_fields(text: str) -> datetime | None:
    """The reference: the timestamp built field by field from the pattern's groups."""
    match = re.fullmatch(
        r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
        r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))", text)
    assert match is not None
    year, month, day, hour, minute, second, frac, zulu, sign, off_h, off_m = match.groups()
    offset = timedelta(0) if zulu else timedelta(hours=int(off_h), minutes=int(off_m))
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                          int((frac or "0")[:6].ljust(6, "0")),
                          timezone(-offset if sign == "-" else offset))
        moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return moment


def test_rfc3339_agrees_with_the_fields_on_random_timestamps() -> None:
    """Years 2 to 9998 take a faster path (fromisoformat): same moment, offset and
    microseconds as the fields give, for every form the pattern accepts."""
    rng = random.Random(3339)
    for _ in range(20_000):
        year = rng.choice(["0001", "0002", "1999", "2026", "9998", "9999"])
        text = (f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 31):02d}{rng.choice('Tt')}"
                f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}")
        if rng.random() < 0.5:
            text += "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 9)))
        hours, minutes = rng.randint(0, 23), rng.randint(0, 59)
        text += rng.choice(["Z", "z", "+00:00", "-00:00", f"+{hours:02d}:{minutes:02d}",
                            f"-{hours:02d}:{minutes:02d}"])
        parsed, expected = parse_rfc3339(text), _rfc3339_by_fields(text)
        assert parsed == expected, text
        if parsed is not None and expected is not None:
            assert (parsed.utcoffset(), parsed.microsecond) == (
                expected.utcoffset(), expected.microsecond), text


def test_valid_call_ended_keeps_fields_and_defaults() -> None:
    event = validate_event("call-ended", {**CALL, "x-extra": 1})
    assert isinstance(event, CallEnded)
    assert event.header.customer_id == "u1"
    assert event.wait_seconds == 0.0
    assert event.fields["x-extra"] == 1
    assert event.header.occurred_at - event.started_at == timedelta(minutes=10)


def test_survey_integral_float_becomes_int() -> None:
    event = validate_event("survey-answered", {
        "event_id": "s", "occurred_at": "2026-11-24T10:00:00Z", "contact_id": "c",
        "customer_id": None, "source": "web", "nps": 7.0,
    })
    assert isinstance(event, SurveyAnswered)
    assert event.nps == 7
    assert isinstance(event.nps, int)


def test_unknown_kind_is_rejected() -> None:
    result = validate_event("chat-started", CALL)
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.UNKNOWN_TOPIC


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, RejectReason.NOT_JSON),
        (b"{not json", RejectReason.NOT_JSON),
        (b"\xff\xfe", RejectReason.NOT_JSON),
        (b'"text"', RejectReason.NOT_OBJECT),
        (b"x" * 2000, RejectReason.TOO_LARGE),
    ],
)
def test_codec_rejections(value: bytes | None, reason: RejectReason) -> None:
    result = decode_event("call-ended", value, max_bytes=1024)
    assert isinstance(result, Rejection)
    assert result.reason is reason


def test_codec_size_limit_is_inclusive() -> None:
    import orjson

    body = orjson.dumps(CALL)
    assert isinstance(decode_event("call-ended", body, max_bytes=len(body)), CallEnded)
    too_big = decode_event("call-ended", body, max_bytes=len(body) - 1)
    assert isinstance(too_big, Rejection)
    assert too_big.reason is RejectReason.TOO_LARGE


# -- the door: limits beyond the schemas (depth, key, clock skew) ----------------------------

def _nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = {"n": value}
    return value


NOW_MS = 1_764_000_000_000  # 2025-11-24T16:00:00Z, the record's Kafka timestamp
NOW = datetime.fromtimestamp(NOW_MS / 1000, UTC)


def _at(seconds_after_now: float) -> str:
    return (NOW + timedelta(seconds=seconds_after_now)).isoformat().replace("+00:00", "Z")


def _call_at(seconds_after_now: float, **fields: object) -> dict[str, object]:
    return {**CALL, "occurred_at": _at(seconds_after_now), "started_at": _at(-3600), **fields}


DOOR_CASES = [
    # (note, event, key, timestamp_ms, expected reason or None)
    ("keyed by its customer", _call_at(0), b"u1", NOW_MS, None),
    ("keyed by its contact, customer unknown", _call_at(0, customer_id=None), b"c1", NOW_MS,
     None),
    ("keyed by its contact, customer known", _call_at(0), b"c1", NOW_MS, "key_mismatch"),
    ("keyed by the customer, customer unknown", _call_at(0, customer_id=None), b"u1", NOW_MS,
     "key_mismatch"),
    ("no key", _call_at(0), None, NOW_MS, "key_mismatch"),
    ("a key that is not UTF-8", _call_at(0), b"\xff\xfe", NOW_MS, "key_mismatch"),
    ("a key differing in case", _call_at(0), b"U1", NOW_MS, "key_mismatch"),
    ("an hour ahead of its record, exactly", _call_at(3600), b"u1", NOW_MS, None),
    ("a second past the hour ahead", _call_at(3601), b"u1", NOW_MS, "from_future"),
    ("year 9999", {**CALL, "occurred_at": "9999-12-31T23:59:59Z"}, b"u1", NOW_MS,
     "from_future"),
    ("ten years before its record (a replay)", _call_at(-10 * 365 * 86400,
                                                       started_at=_at(-10 * 365 * 86400)),
     b"u1", NOW_MS, None),
    ("a record without timestamp", {**CALL, "occurred_at": "9999-12-31T23:59:59Z"}, b"u1",
     None, None),
    ("a wrong key and a future time: the key is told", _call_at(7200), b"zz", NOW_MS,
     "key_mismatch"),
]


@pytest.mark.parametrize(("note", "event", "key", "timestamp_ms", "expected"), DOOR_CASES,
                         ids=[c[0] for c in DOOR_CASES])
def test_the_record_around_a_valid_event(note: str, event: dict[str, object], key: bytes | None,
                                         timestamp_ms: int | None, expected: str | None) -> None:
    parsed = validate_event("call-ended", event)
    assert not isinstance(parsed, Rejection), parsed
    found = check_record(parsed, key, timestamp_ms, DoorLimits())
    assert (None if found is None else found.reason.value) == expected, found


def test_clock_skew_is_configurable() -> None:
    parsed = validate_event("call-ended", _call_at(600))
    assert not isinstance(parsed, Rejection)
    assert check_record(parsed, b"u1", NOW_MS, DoorLimits(max_clock_skew=900)) is None
    found = check_record(parsed, b"u1", NOW_MS, DoorLimits(max_clock_skew=300))
    assert found is not None
    assert found.reason is RejectReason.FROM_FUTURE
    assert "600s ahead" in found.message


def test_key_mismatch_message_names_both() -> None:
    parsed = validate_event("call-ended", CALL)
    assert not isinstance(parsed, Rejection)
    found = check_record(parsed, b"other", None, DoorLimits())
    assert found is not None
    assert found.message == ("call-ended.customer_id: the message has key 'other', not the "
                             "customer_id 'u1'")


TIME_CASES = [
    ("0001-01-01T00:00:00+23:59", "must fall within years 1 to 9999 in UTC"),
    ("9999-12-31T23:59:59-23:59", "must fall within years 1 to 9999 in UTC"),
    ("2026-02-30T00:00:00Z", "no such day"),
    ("2026-11-24T10:00:60Z", "must be an RFC 3339 timestamp with offset"),
]


@pytest.mark.parametrize(("text", "said"), TIME_CASES)
def test_impossible_times_are_bad_timestamps(text: str, said: str) -> None:
    for name in ("occurred_at", "started_at"):
        result = validate_event("call-ended", {**CALL, name: text})
        assert isinstance(result, Rejection)
        assert result.reason is RejectReason.BAD_TIMESTAMP
        assert result.message.startswith(f"call-ended.{name}: ")
        assert said in result.message


@pytest.mark.parametrize(("levels", "limit", "too_deep"), [
    (31, 32, False), (32, 32, True), (3, 4, False), (4, 4, True), (260, 32, True),
    (1000, 200, True),
])
def test_nesting_depth(levels: int, limit: int, too_deep: bool) -> None:
    result = validate_event("call-ended", {**CALL, "crm": _nested(levels)}, max_depth=limit)
    if too_deep:
        assert isinstance(result, Rejection)
        assert result.reason is RejectReason.TOO_DEEP
    else:
        assert isinstance(result, CallEnded)


def test_depth_counts_arrays_and_objects_in_any_field() -> None:
    deep_list = [[[[1]]]]  # four levels under the event: depth 5
    assert nesting_exceeds({"a": 1, "b": deep_list}, 4)
    assert not nesting_exceeds({"a": 1, "b": deep_list}, 5)
    assert nesting_exceeds({"a": [{"b": [{"c": []}]}]}, 5)
    assert not nesting_exceeds({"a": "[[[[[[", "b": None}, 1)


def test_a_decoded_value_deeper_than_orjson_writes_is_refused_at_the_door() -> None:
    value = b'{"event_id": "e", "crm": ' + b"[" * 300 + b"]" * 300 + b"}"
    result = decode_event("call-ended", value, 1 << 20)
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.TOO_DEEP
