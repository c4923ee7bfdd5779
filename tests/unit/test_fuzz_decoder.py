"""Fuzzing the decoder and validator: whatever the bytes, no exception escapes, and every input
is either accepted as an event or rejected with one of the documented reasons (docs/events.md);
the dead-letter record of any message can be built and keeps the original bytes."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.adapters.codec import decode_event
from service.domain.events import CallEnded, Rejection, RejectReason, SurveyAnswered, Transfer
from service.service_layer.dead_letters import InputMessage, dead_letter_record

ROOT = Path(__file__).resolve().parents[2]
CASES = json.loads((ROOT / "schemas/examples/corpus.json").read_text())["cases"]
VALID = [c for c in CASES if c["expect"] == "valid"]
KINDS = ("call-ended", "transfer", "survey-answered")
TYPES = {"call-ended": CallEnded, "transfer": Transfer, "survey-answered": SurveyAnswered}
# What the decoder may answer for input it cannot apply (too_late is judged later, by the
# watermark; unknown_topic by the topic; processing_error only for a defect of the worker).
DECODER_REASONS = {r for r in RejectReason} - {
    RejectReason.TOO_LATE, RejectReason.UNKNOWN_TOPIC, RejectReason.PROCESSING_ERROR}
LIMIT = 4096

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(
    allow_nan=False, allow_infinity=False) | st.text(max_size=140)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12,
)
timestamps = st.one_of(
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),  # no offset: rejected
    st.from_regex(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})\Z"),
    st.text(max_size=40),
)


def check(kind: str, value: bytes | None) -> ContactEventOrRejection:
    result = decode_event(kind, value, LIMIT)
    if isinstance(result, Rejection):
        assert result.reason in DECODER_REASONS, result
        assert result.message.startswith(kind), result.message  # names what was wrong
    else:
        assert isinstance(result, TYPES[kind])
        header = result.header
        assert 1 <= len(header.event_id) <= 128
        assert 1 <= len(header.contact_id) <= 128
        assert header.occurred_at.tzinfo is not None
        if isinstance(result, CallEnded):
            assert result.started_at <= header.occurred_at
    return result


ContactEventOrRejection = Any


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(KINDS), value=st.none() | st.binary(max_size=LIMIT + 64))
def test_arbitrary_bytes_are_accepted_or_rejected_with_a_reason(kind: str,
                                                                 value: bytes | None) -> None:
    result = check(kind, value)
    if value is None or len(value) > LIMIT:
        assert isinstance(result, Rejection)
        assert result.reason == (RejectReason.NOT_JSON if value is None
                                 else RejectReason.TOO_LARGE)


@st.composite
def mutated_events(draw: st.DrawFn) -> tuple[str, dict[str, Any], str]:
    case = draw(st.sampled_from(VALID))
    event = dict(case["event"])
    mutation = draw(st.sampled_from(["drop", "replace", "timestamp", "add", "several"]))
    for _ in range(draw(st.integers(2, 4)) if mutation == "several" else 1):
        name = draw(st.sampled_from(sorted(event))) if event else "event_id"
        step = mutation if mutation != "several" else draw(
            st.sampled_from(["drop", "replace", "timestamp", "add"]))
        if step == "drop":
            event.pop(name, None)
        elif step == "replace":
            event[name] = draw(json_values)
        elif step == "timestamp":
            event[draw(st.sampled_from(["occurred_at", "started_at"]))] = draw(timestamps)
        else:
            event[draw(st.text(max_size=12))] = draw(json_values)
    return case["kind"], event, mutation


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_events())
def test_mutated_valid_events_are_accepted_or_rejected_with_a_reason(
    drawn: tuple[str, dict[str, Any], str]
) -> None:
    kind, event, _ = drawn
    check(kind, json.dumps(event).encode())


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(KINDS), value=st.none() | st.binary(max_size=300),
       key=st.none() | st.binary(max_size=40), offset=st.integers(0, 2**62))
def test_every_message_has_a_dead_letter_record_that_keeps_its_bytes(
    kind: str, value: bytes | None, key: bytes | None, offset: int
) -> None:
    result = decode_event(kind, value, LIMIT)
    reason = result.reason.value if isinstance(result, Rejection) else "too_late"
    msg = InputMessage(kind, 3, offset, key, value, 1_764_000_000_000)
    record = dead_letter_record(msg, reason, "why", datetime(2026, 11, 24, tzinfo=UTC))
    decoded = orjson.loads(orjson.dumps(record))
    assert decoded["reason"] == reason
    assert decoded["offset"] == offset
    if value is None:
        assert decoded["value_base64"] is None
    else:
        assert base64.b64decode(decoded["value_base64"]) == value
    if key is not None:
        assert base64.b64decode(decoded["key_base64"]) == key


def test_the_fuzzed_contract_has_valid_examples_of_every_kind() -> None:
    # the mutations start from valid events of each kind; each of those is accepted
    assert {c["kind"] for c in VALID} == set(KINDS)
    for case in VALID:
        assert not isinstance(check(case["kind"], orjson.dumps(case["event"])), Rejection)
