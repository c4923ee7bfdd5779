from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from service.adapters.codec import decode_event
from service.domain.events import CallEnded, Rejection, RejectReason, SurveyAnswered
from service.domain.validation import parse_rfc3339, validate_event

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
        ("2026-11-24T10:00:60Z", None),
    ],
)
def test_rfc3339(text: str, expected: datetime | None) -> None:
    assert parse_rfc3339(text) == expected


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
