"""The declarative mapping: a mapping file checked at start (errors name the line), and each
record mapped to contract events or to failures naming the field."""

from __future__ import annotations

import textwrap
from typing import Any

import orjson
import pytest

from service.domain.events import RejectReason
from service.mapping.engine import MapLimits, event_id_of, map_record
from service.mapping.spec import MappingError, MappingSpec, load_mapping

SALT = b"unit-test-salt-0123456789"

BASE = """\
source: crm
record_id: id
params:
  tier_field: tier
common:
  contact_id: id
  customer_id:
    first:
      - cust
      - path: phone
        normalize: phone
        convert: hash
events:
  - kind: call-ended
    when: ended
    fields:
      occurred_at: {path: ended, convert: timestamp}
      started_at: {path: began, convert: timestamp, format: epoch_millis}
      channel:
        path: medium
        map: {PHONE: voice, WEBCHAT: chat}
      queue: {path: q, default: general}
      outcome:
        cases:
          - when: agent
            value: handled
          - when: queued
            value: abandoned
        default: self_service
      agent_id: agent
      segment:
        path: ${tier_field}
        convert: string
      wait_seconds: {path: wait_ms, convert: number, scale: 0.001, default: 0}
  - kind: transfer
    for_each: "pairs(agents || `[]`)"
    fields:
      occurred_at: {path: record.ended, convert: timestamp}
      from_queue: "item[0].q"
      to_queue: "item[1].q"
  - kind: survey-answered
    when: score
    fields:
      occurred_at: {path: ended, convert: timestamp}
      source: {value: sms}
      csat: {path: score, convert: integer}
      resolved: {path: fixed, convert: boolean}
"""


def spec(text: str = BASE, **params: str) -> MappingSpec:
    return load_mapping(text, "crm.yaml", params)


def record(**overrides: Any) -> bytes:
    body: dict[str, Any] = {
        "id": "r-1", "cust": "cust-9", "ended": "2026-05-04T10:10:00+02:00",
        "began": 1777881600000, "medium": "PHONE", "q": "billing", "agent": "alice",
        "queued": True, "tier": "gold", "wait_ms": 42000,
    }
    body.update(overrides)
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


def test_a_record_maps_to_a_valid_call_ended_with_a_derived_event_id() -> None:
    result = map_record(spec(), record(), salt=SALT)
    assert result.failures == []
    [ended] = result.events
    assert ended.kind == "call-ended"
    assert ended.key == b"cust-9"
    assert ended.event == {
        "event_id": "crm:r-1:call-ended", "contact_id": "r-1", "customer_id": "cust-9",
        "occurred_at": "2026-05-04T08:10:00Z", "started_at": "2026-05-04T08:00:00Z",
        "channel": "voice", "queue": "billing", "outcome": "handled", "agent_id": "alice",
        "segment": "gold", "wait_seconds": 42.0, "source_system": "crm",
        "source_record_id": "r-1",
    }
    # Mapping the same record again gives the same event: a duplicate the worker drops.
    assert map_record(spec(), record(), salt=SALT).events[0].event == ended.event


def test_cases_defaults_and_enum_tables() -> None:
    abandoned = map_record(spec(), record(agent=None, q=None, medium="WEBCHAT"), salt=SALT)
    event = abandoned.events[0].event
    assert (event["outcome"], event["queue"], event["channel"]) == ("abandoned", "general",
                                                                    "chat")
    assert "agent_id" not in event
    ivr = map_record(spec(), record(agent=None, queued=None), salt=SALT).events[0].event
    assert ivr["outcome"] == "self_service"


def test_phone_numbers_are_hashed_with_the_salt_after_normalising() -> None:
    a = map_record(spec(), record(cust=None, phone="tel:+1 425-555-0100"), salt=SALT)
    b = map_record(spec(), record(cust=None, phone="+14255550100"), salt=SALT)
    other_salt = map_record(spec(), record(cust=None, phone="+14255550100"),
                            salt=b"another-salt-0123456789")
    hashed = a.events[0].event["customer_id"]
    assert hashed.startswith("h-")
    assert "4255550100" not in hashed
    assert hashed == b.events[0].event["customer_id"]
    assert hashed != other_salt.events[0].event["customer_id"]
    assert a.events[0].key == hashed.encode()


def test_unidentified_caller_is_keyed_by_contact() -> None:
    result = map_record(spec(), record(cust=None), salt=SALT)
    assert result.events[0].event["customer_id"] is None
    assert result.events[0].key == b"r-1"


def test_for_each_gives_one_event_per_item_with_its_own_id() -> None:
    agents = [{"q": "sales"}, {"q": "billing"}, {"q": "retention"}]
    result = map_record(spec(), record(agents=agents), salt=SALT)
    transfers = [e.event for e in result.events if e.kind == "transfer"]
    assert [(t["from_queue"], t["to_queue"]) for t in transfers] == [
        ("sales", "billing"), ("billing", "retention")]
    assert [t["event_id"] for t in transfers] == ["crm:r-1:transfer:0", "crm:r-1:transfer:1"]
    assert all(t["contact_id"] == "r-1" for t in transfers)


def test_survey_conversions() -> None:
    result = map_record(spec(), record(score="4", fixed="no"), salt=SALT)
    [survey] = [e.event for e in result.events if e.kind == "survey-answered"]
    assert (survey["csat"], survey["resolved"], survey["source"]) == (4, False, "sms")


@pytest.mark.parametrize(
    ("overrides", "reason", "field", "words"),
    [
        ({"ended": "yesterday"}, RejectReason.BAD_TIMESTAMP, "occurred_at", "RFC 3339"),
        ({"began": "soon"}, RejectReason.BAD_TIMESTAMP, "started_at", "epoch_millis"),
        ({"medium": "PIGEON"}, RejectReason.INVALID_VALUE, "channel", "'PIGEON' is not in"),
        ({"medium": None}, RejectReason.MISSING_FIELD, "channel", "from medium: missing"),
        ({"wait_ms": "long"}, RejectReason.WRONG_TYPE, "wait_seconds", "must be a number"),
        ({"tier": {"a": 1}}, RejectReason.WRONG_TYPE, "segment", "must be a string"),
        ({"q": "x" * 129}, RejectReason.INVALID_VALUE, "queue", "1 to 128"),
        ({"wait_ms": -5}, RejectReason.INVALID_VALUE, "wait_seconds", ">= 0"),
        ({"began": 1777890000000}, RejectReason.STARTED_AFTER_OCCURRED, "started_at", ""),
    ],
)
def test_unmappable_records_name_the_field(overrides: dict[str, Any], reason: RejectReason,
                                           field: str, words: str) -> None:
    result = map_record(spec(), record(**overrides), salt=SALT)
    assert result.events == []
    [failure] = result.failures
    assert failure.reason == reason
    assert failure.field == field
    assert failure.event_id == "crm:r-1:call-ended"
    assert "crm record 'r-1'" in failure.message
    assert words in failure.message


def test_one_failing_rule_leaves_the_others() -> None:
    result = map_record(spec(), record(score="great"), salt=SALT)
    assert [e.kind for e in result.events] == ["call-ended"]
    [failure] = result.failures
    assert (failure.reason, failure.field) == (RejectReason.WRONG_TYPE, "csat")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", RejectReason.NOT_JSON),
        (None, RejectReason.NOT_JSON),
        (b"[1, 2]", RejectReason.NOT_OBJECT),
        (orjson.dumps({"id": "r", "deep": [[[[[[1]]]]]]}), RejectReason.TOO_DEEP),
        (orjson.dumps({"id": "r", "pad": "x" * 3000}), RejectReason.TOO_LARGE),
        (orjson.dumps({"ended": "2026-05-04T10:00:00Z"}), RejectReason.MISSING_FIELD),
        (orjson.dumps({"id": {"nested": 1}}), RejectReason.WRONG_TYPE),
        (orjson.dumps({"id": "x" * 300}), RejectReason.INVALID_VALUE),
    ],
)
def test_bounds_on_the_record(value: bytes | None, reason: RejectReason) -> None:
    result = map_record(spec(), value, salt=SALT,
                        limits=MapLimits(max_record_bytes=2048, max_depth=5))
    assert result.events == []
    assert [f.reason for f in result.failures] == [reason]


def test_a_record_no_rule_takes_is_neither_mapped_nor_failed() -> None:
    result = map_record(spec(), orjson.dumps({"id": "r-2", "note": "a task"}), salt=SALT)
    assert (result.events, result.failures, result.record_id) == ([], [], "r-2")


def test_long_event_ids_are_hashed_within_the_contract() -> None:
    short = event_id_of("crm", "r-1", "call-ended", None)
    long = event_id_of("crm", "r" * 250, "call-ended", 3)
    assert short == "crm:r-1:call-ended"
    assert len(long) <= 128
    assert long.startswith("crm:sha256:")
    assert long == event_id_of("crm", "r" * 250, "call-ended", 3)
    assert long != event_id_of("crm", "r" * 250, "call-ended", 4)


def test_params_are_overridden() -> None:
    mapped = map_record(spec(tier_field="level"), record(tier=None, level="silver"),
                        salt=SALT)
    assert mapped.events[0].event["segment"] == "silver"


def _error(text: str, **params: str) -> str:
    with pytest.raises(MappingError) as caught:
        load_mapping(textwrap.dedent(text), "bad.yaml", params)
    return str(caught.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("      queue: {path: q, default: general}",
          "      queue: {path: q, mapp: {a: b}}"),
         "bad.yaml:22: events[0].fields.queue.mapp: unknown key 'mapp'"),
        (("    when: ended", "    when: ended[?"),
         "bad.yaml:15: events[0].when: not a valid JMESPath expression"),
        (("  - kind: transfer", "  - kind: handover"),
         "bad.yaml:35: events[1].kind: expected one of call-ended, transfer, survey-answered"),
        (("      agent_id: agent", "      agent_id: {path: agent, convert: uppercase}"),
         "bad.yaml:30: events[0].fields.agent_id.convert: expected one of string"),
        (("        path: ${tier_field}", "        path: ${tier}"),
         "bad.yaml:32: events[0].fields.segment.path: unknown parameter ${tier}"),
        (("      to_queue: \"item[1].q\"", "      to_agent: \"item[1].q\""),
         "bad.yaml:37: events[1].fields: a transfer needs 'to_queue'"),
        (("      source: {value: sms}", "      source: {value: sms, path: src}"),
         "bad.yaml:45: events[2].fields.source: give exactly one of path, value"),
        (("source: crm", "source: CRM system"),
         "bad.yaml:1: source: expected a name"),
        (("      csat: {path: score, convert: integer}",
          "      event_id: {path: score}"),
         "bad.yaml:46: events[2].fields.event_id: event_id is derived"),
        (("      wait_seconds: {path: wait_ms, convert: number, scale: 0.001, default: 0}",
          "      wait_seconds: {path: wait_ms, format: rfc3339}"),
         "bad.yaml:34: events[0].fields.wait_seconds.format: `format` goes with convert"),
    ],
)
def test_errors_name_the_line_and_the_key(change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in BASE
    message = _error(BASE.replace(old, new))
    assert message.startswith(expected), message


def test_yaml_errors_name_the_line() -> None:
    assert _error("source: crm\nrecord_id: id\nevents:\n  - kind: [transfer\n").startswith(
        "bad.yaml:5: not valid YAML")


def test_unknown_param_override_is_refused() -> None:
    assert "parameter(s) colour given but not declared" in _error(BASE, colour="red")


def test_param_values_cannot_break_out_of_an_expression() -> None:
    assert "a parameter value is 1-128 characters without quotes" in _error(
        BASE, tier_field='tier" || @')


def test_a_mapping_with_hash_says_so() -> None:
    assert spec().uses_hash
    assert not spec(BASE.replace("        convert: hash\n", "")).uses_hash


def test_yaml_aliases_are_refused() -> None:
    text = BASE.replace("      source: {value: sms}", "      source: &src {value: sms}")
    text = text.replace("      csat: {path: score, convert: integer}",
                        "      csat: {path: score, convert: integer}\n      other: *src")
    assert "YAML anchors and aliases are not supported" in _error(text)
