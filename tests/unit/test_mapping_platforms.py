"""The shipped mappings of Amazon Connect and Genesys Cloud on example records built from the
platforms' documentation (tests/support/platforms.py), and `cx-stream map` without Kafka."""

from __future__ import annotations

import argparse
import base64
import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.config import ConfigError, load_settings
from service.domain.events import RejectReason
from service.map_stage import MapMetrics, Mapper, _from_file, read_mapping, run_map
from service.mapping.engine import RecordResult, map_record
from service.mapping.spec import MappingError, MappingSpec
from service.service_layer.dead_letters import InputMessage
from tests.support.platforms import (
    DANA_PHONE,
    ELI_PHONE,
    amazon_connect_records,
    genesys_cloud_records,
)

SALT = b"platform-test-salt-0123"


def mapped(spec: MappingSpec, records: list[dict[str, Any]]) -> dict[str, RecordResult]:
    results = {}
    for record in records:
        result = map_record(spec, orjson.dumps(record), salt=SALT)
        assert result.record_id is not None
        results[result.record_id] = result
    return results


def events(result: RecordResult) -> list[tuple[str, dict[str, Any]]]:
    return [(e.kind, e.event) for e in result.events]


def test_amazon_connect_contact_records() -> None:
    out = mapped(read_mapping("amazon_connect", {}), amazon_connect_records())
    [(kind, a1)] = events(out["A1"])
    assert kind == "call-ended"
    assert {k: a1[k] for k in ("event_id", "contact_id", "customer_id", "queue", "outcome",
                               "agent_id", "reason", "wait_seconds", "hold_seconds",
                               "talk_seconds", "started_at", "occurred_at")} == {
        "event_id": "amazon_connect:A1:call-ended", "contact_id": "A1",
        "customer_id": "crm-dana", "queue": "billing", "outcome": "handled",
        "agent_id": "alice", "reason": "billing_question", "wait_seconds": 60.0,
        "hold_seconds": 30.0, "talk_seconds": 420.0, "started_at": "2026-06-01T09:00:00Z",
        "occurred_at": "2026-06-01T09:10:00Z"}
    # The transferred leg: its call-ended joins the initial contact, plus a transfer and the
    # survey of its disconnect flow, all of the same customer (the same Kafka key).
    a2 = dict(events(out["A2"]))
    assert set(a2) == {"call-ended", "transfer", "survey-answered"}
    assert {e["contact_id"] for e in a2.values()} == {"A1"}
    assert {e.key for e in out["A2"].events} == {b"crm-dana"}
    assert (a2["call-ended"]["queue"], a2["call-ended"]["agent_id"]) == ("retention", "bob")
    assert a2["transfer"] == {
        "event_id": "amazon_connect:A2:transfer", "contact_id": "A1",
        "customer_id": "crm-dana", "occurred_at": "2026-06-01T09:10:00Z",
        "from_queue": "transferred", "to_queue": "retention", "to_agent": "bob",
        "previous_contact_id": "A1", "source_system": "amazon_connect",
        "source_record_id": "A2"}
    assert (a2["survey-answered"]["csat"], a2["survey-answered"]["resolved"]) == (2, False)
    # Queued, then gone before an agent: abandoned, no agent; its callback is handled and
    # takes the same contact.
    [(_, a3)] = events(out["A3"])
    assert (a3["outcome"], a3["contact_id"], "agent_id" in a3) == ("abandoned", "A3", False)
    [(_, a4)] = events(out["A4"])
    assert (a4["outcome"], a4["contact_id"], a4["agent_id"]) == ("handled", "A3", "carol")
    # Never queued: self-service, in the configured queue; the hashed number as customer.
    [(_, a5)] = events(out["A5"])
    assert (a5["outcome"], a5["queue"]) == ("self_service", "self-service")
    assert a5["customer_id"].startswith("h-")
    assert ELI_PHONE[1:] not in a5["customer_id"]
    [(_, a7)] = events(out["A7"])
    assert a7["customer_id"] == a5["customer_id"]
    assert a7["customer_id"] != map_record(
        read_mapping("amazon_connect", {}),
        orjson.dumps({**amazon_connect_records()[6],
                      "CustomerEndpoint": {"Address": DANA_PHONE}}),
        salt=SALT).events[0].event["customer_id"]
    # A task is not a customer's contact: nothing, and no dead letter.
    assert (out["A6"].events, out["A6"].failures) == ([], [])
    [failure] = out["A8"].failures
    assert (failure.reason, failure.field) == (RejectReason.BAD_TIMESTAMP, "occurred_at")
    assert "DisconnectTimestamp" in failure.message


def test_amazon_connect_params_pick_the_attributes() -> None:
    spec = read_mapping("amazon_connect", {"customer_attribute": "account",
                                           "disposition_attribute": "outcome_code"})
    record = {**amazon_connect_records()[0],
              "Attributes": {"account": "acc-7", "outcome_code": "refund"}}
    [event] = map_record(spec, orjson.dumps(record), salt=SALT).events
    assert (event.event["customer_id"], event.event["reason"]) == ("acc-7", "refund")


def test_amazon_connect_contact_lens_sentiment() -> None:
    record = {**amazon_connect_records()[0], "ConversationCharacteristics": {
        "Sentiment": {"OverallSentiment": {"AGENT": 0, "CUSTOMER": -2.5}}}}
    [event] = map_record(read_mapping("amazon_connect", {}), orjson.dumps(record),
                         salt=SALT).events
    assert event.event["sentiment"] == pytest.approx(-0.5)
    assert "sentiment" not in map_record(read_mapping("amazon_connect", {}), orjson.dumps(
        amazon_connect_records()[0]), salt=SALT).events[0].event


def test_genesys_cloud_conversation_details() -> None:
    out = mapped(read_mapping("genesys_cloud", {}), genesys_cloud_records())
    g1 = events(out["G1"])
    assert [k for k, _ in g1] == ["call-ended", "transfer", "survey-answered"]
    ended, transfer, survey = (e for _, e in g1)
    assert {k: ended[k] for k in ("customer_id", "channel", "queue", "outcome", "agent_id",
                                  "reason", "wait_seconds", "hold_seconds", "talk_seconds")
            } == {"customer_id": "ext-fay", "channel": "voice", "queue": "q-sales",
                  "outcome": "handled", "agent_id": "u-ben", "reason": "wc-fixed",
                  "wait_seconds": 60.0, "hold_seconds": 30.0, "talk_seconds": 1645.0}
    assert {k: transfer[k] for k in ("contact_id", "from_queue", "to_queue", "from_agent",
                                     "to_agent", "kind", "occurred_at")} == {
        "contact_id": "G1", "from_queue": "q-sales", "to_queue": "q-tech",
        "from_agent": "u-ann", "to_agent": "u-ben", "kind": "blind",
        "occurred_at": "2026-06-01T10:10:40Z"}
    assert (survey["nps"], survey["source"], survey["event_id"]) == (
        9, "email", "genesys_cloud:G1:survey-answered:0")
    [(_, g2)] = events(out["G2"])
    assert (g2["outcome"], g2["channel"], g2["queue"]) == ("abandoned", "chat", "q-tech")
    [(_, g3)] = events(out["G3"])
    assert (g3["outcome"], g3["agent_id"]) == ("handled", "u-ann")
    [(_, g4)] = events(out["G4"])
    assert (g4["outcome"], g4["queue"]) == ("self_service", "self-service")
    assert g4["customer_id"].startswith("h-")
    [failure] = out["G5"].failures
    assert (failure.reason, failure.field) == (RejectReason.INVALID_VALUE, "channel")
    assert "'cobrowse' is not in the table" in failure.message


def test_genesys_single_agent_transfer_to_a_queue() -> None:
    g3 = genesys_cloud_records()[2]
    agent = g3["participants"][2]
    agent["sessions"][0]["segments"][0]["disconnectType"] = "transfer.consult"
    g3["participants"].append({"participantId": "p4", "purpose": "acd", "sessions": [{
        "mediaType": "voice", "segments": [{
            "segmentType": "interact", "queueId": "q-billing",
            "segmentStart": "2026-06-02T16:20:00.000Z",
            "segmentEnd": "2026-06-02T16:21:00.000Z"}]}]})
    result = map_record(read_mapping("genesys_cloud", {}), orjson.dumps(g3), salt=SALT)
    [transfer] = [e.event for e in result.events if e.kind == "transfer"]
    assert (transfer["from_queue"], transfer["to_queue"], transfer["from_agent"]) == (
        "q-tech", "q-billing", "u-ann")
    assert transfer["event_id"] == "genesys_cloud:G3:agent-to-queue"
    assert transfer["kind"] == "blind"  # no agent took it: the consult never completed


def test_the_same_number_is_the_same_customer_on_both_platforms() -> None:
    connect = map_record(read_mapping("amazon_connect", {}), orjson.dumps(
        {**amazon_connect_records()[0], "Attributes": {}}), salt=SALT).events[0]
    g1 = genesys_cloud_records()[0]
    del g1["participants"][0]["externalContactId"]
    genesys = map_record(read_mapping("genesys_cloud", {}), orjson.dumps(g1),
                         salt=SALT).events[0]
    assert connect.event["customer_id"] == genesys.event["customer_id"]


def _mapper(**env: str) -> Mapper:
    settings = load_settings(env)
    spec = read_mapping("amazon_connect", settings.map_params)
    return Mapper(spec, settings, SALT, MapMetrics(spec.source))


def test_dead_letter_keeps_the_raw_record_and_names_the_field() -> None:
    mapper = _mapper(CX_TOPIC_DEAD_LETTER="dl")
    raw = orjson.dumps(amazon_connect_records()[7])
    _, outputs = mapper.map(InputMessage("connect-raw", 2, 41, b"A8", raw, 1_780_000_000_000))
    [(topic, key, value)] = outputs
    assert (topic, key) == ("dl", b"A8")
    dead = orjson.loads(value)
    assert (dead["topic"], dead["partition"], dead["offset"]) == ("connect-raw", 2, 41)
    assert dead["reason"] == "bad_timestamp"
    assert "occurred_at from DisconnectTimestamp" in dead["message"]
    assert dead["event_id"] == "amazon_connect:A8:call-ended"
    assert base64.b64decode(dead["value_base64"]) == raw
    assert mapper.metrics.dead.labels("amazon_connect", "bad_timestamp")._value.get() == 1


def test_events_go_to_their_input_topic_and_are_counted() -> None:
    mapper = _mapper(CX_TOPIC_TRANSFER="xfer")
    _, outputs = mapper.map(InputMessage("raw", 0, 1, None,
                                         orjson.dumps(amazon_connect_records()[1]), None))
    assert [(t, k) for t, k, _ in outputs] == [("call-ended", b"crm-dana"),
                                               ("xfer", b"crm-dana"),
                                               ("survey-answered", b"crm-dana")]
    m = mapper.metrics
    assert m.events.labels("amazon_connect", "transfer")._value.get() == 1
    assert m.records.labels("amazon_connect")._value.get() == 1
    mapper.map(InputMessage("raw", 0, 2, None, orjson.dumps(amazon_connect_records()[5]),
                            None))
    assert m.skipped.labels("amazon_connect")._value.get() == 1


def test_from_file_to_stdout_prints_what_produce_reads(tmp_path: Path) -> None:
    path = tmp_path / "export.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in amazon_connect_records()))
    out, err = io.StringIO(), io.StringIO()
    assert _from_file(_mapper(), str(path), True, out, err) == 0
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [line["topic"] for line in lines] == [
        "call-ended", "call-ended", "transfer", "survey-answered", "call-ended", "call-ended",
        "call-ended", "call-ended"]
    assert lines[0]["event"]["event_id"] == "amazon_connect:A1:call-ended"
    problems = err.getvalue().splitlines()
    assert orjson.loads(problems[0])["line"] == 8
    assert orjson.loads(problems[0])["field"] == "occurred_at"
    assert problems[-1] == "cx-stream map: 8 records: 8 events, 1 dead letters"


def _run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
         env: dict[str, str], **args: Any) -> tuple[int, str]:
    for name in ("CX_MAP_HASH_SALT", "CX_MAP_MAPPING", "CX_MAP_PARAMS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    namespace = argparse.Namespace(**{"mapping": None, "topic": None, "from_file": None,
                                      "to_stdout": False, **args})
    code = run_map(load_settings(), namespace)
    return code, capsys.readouterr().err


def test_a_hashing_mapping_needs_a_salt(capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    code, err = _run(capsys, monkeypatch, {}, mapping="genesys_cloud", from_file="x.jsonl",
                     to_stdout=True)
    assert code == 2
    assert "CX_MAP_HASH_SALT" in err


def test_a_bad_mapping_file_stops_the_command(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    bad = tmp_path / "mine.yaml"
    bad.write_text("source: mine\nrecord_id: id\nevents:\n  - kind: call-ended\n"
                   "    when: '[?'\n")
    code, err = _run(capsys, monkeypatch, {"CX_MAP_HASH_SALT": "s" * 16}, mapping=str(bad))
    assert code == 2
    assert err.startswith("cx-stream map: mine.yaml:5: events[0].when: not a valid JMESPath")
    code, err = _run(capsys, monkeypatch, {}, mapping=str(tmp_path / "missing.yaml"))
    assert code == 2
    assert "cannot read the mapping file" in err


def test_shipped_mappings_load_and_unknown_ones_do_not() -> None:
    for name in ("amazon_connect", "genesys_cloud"):
        assert read_mapping(name, {}).source == name
    with pytest.raises(MappingError, match="cannot read"):
        read_mapping("avaya", {})


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CX_MAP_PARAMS": "[1]"}, "CX_MAP_PARAMS"),
        ({"CX_MAP_PARAMS": '{"a": {"b": 1}}'}, "CX_MAP_PARAMS"),
        ({"CX_MAP_TOPIC": "raw topic"}, "CX_MAP_TOPIC"),
        ({"CX_MAP_MAX_RECORD_BYTES": "10"}, "CX_MAP_MAX_RECORD_BYTES"),
        ({"CX_MAP_HASH_SALT": "s" * 16, "CX_MAP_HASH_SALT_FILE": "/x"}, "CX_MAP_HASH_SALT"),
    ],
)
def test_map_variables_are_checked(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=f"^{named}"):
        load_settings(env)


def test_map_variables_parse() -> None:
    s = load_settings({"CX_MAP_PARAMS": '{"customer_attribute": "acct", "n": 3}',
                       "CX_MAP_TOPIC": "connect-raw", "CX_MAP_HASH_SALT": " s3cr3t-salt-0123 "})
    assert s.map_params == {"customer_attribute": "acct", "n": "3"}
    assert (s.map_topic, s.map_hash_salt, s.map_http_port) == ("connect-raw",
                                                               "s3cr3t-salt-0123", 6067)
    assert "s3cr3t" not in repr(s)


class _Unreachable:
    """A producer whose broker never answers: every send fails as Kafka's would. After
    `stop_after` attempts it asks the process to stop (as SIGTERM would)."""

    def __init__(self, stopping: Any, stop_after: int) -> None:
        self.attempts = 0
        self.stopping = stopping
        self.stop_after = stop_after

    async def send(self, topic: str, value: bytes, key: bytes | None) -> Any:
        from aiokafka.errors import KafkaConnectionError

        self.attempts += 1
        if self.attempts == self.stop_after:
            self.stopping.set()
        raise KafkaConnectionError("no broker")


def test_a_batch_kafka_does_not_acknowledge_is_retried_until_asked_to_stop() -> None:
    import asyncio

    from service.map_stage import _send

    async def run() -> tuple[bool, int]:
        stopping = asyncio.Event()
        producer = _Unreachable(stopping, stop_after=3)
        done = await _send(producer, [("t", None, b"{}")], 0.05, stopping)
        return done, producer.attempts

    done, attempts = asyncio.run(run())
    assert done is False  # not acknowledged: the caller must not commit the offsets
    assert attempts == 3  # retried while Kafka was unreachable, not after the stop


@pytest.mark.parametrize(("disconnect", "kind"), [
    ("transfer.consult", "warm"), ("transfer.conference", "warm"),
    ("transfer.forward", "blind"), ("transfer.noanswer", "blind"), ("client", None)])
def test_genesys_transfer_kind_from_the_disconnect_type(disconnect: str,
                                                        kind: str | None) -> None:
    g1 = genesys_cloud_records()[0]
    g1["participants"][3]["sessions"][0]["segments"][1]["disconnectType"] = disconnect
    result = map_record(read_mapping("genesys_cloud", {}), orjson.dumps(g1), salt=SALT)
    [transfer] = [e.event for e in result.events if e.kind == "transfer"]
    assert transfer.get("kind") == kind
