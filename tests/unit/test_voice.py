"""Early warning from speech and text analytics: sentiment, complaint and topics on call-ended,
as perception signals and as an at-risk rule of their own, table by table."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from prometheus_client import CollectorRegistry

from service.adapters.policy_versions import policy_from_dict, policy_to_dict
from service.adapters.survey_gauges import QUEUE_TOPIC_SERIES, SurveyTruthGauges
from service.config import load_settings, policy_of
from service.domain import voice
from service.domain.cardinality import LabelCaps
from service.domain.counters import BucketKey, Counted, expand, merge_counts
from service.domain.engine import apply_event, fold, new_state
from service.domain.events import CallEnded, Rejection, RejectReason
from service.domain.perception import voice_signals
from service.domain.policy import PerceptionPolicy, Policy
from service.domain.records import ContactRecord, CustomerState
from service.domain.settle import settle
from service.domain.validation import validate_event
from service.tools.traffic import TrafficModel
from tests.unit.builders import at, call, survey, ts

POLICY = Policy()
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("sentiment", "complaint", "expected"), [
    (None, None, []),
    (0.0, False, []),  # neutral and no complaint: no signal
    (None, True, [(0.0, 0.3, "complaint")]),  # as a survey saying not resolved
    (-1.0, None, [(0.0, 0.2, "negative_sentiment")]),
    (-0.5, None, [(0.0, 0.1, "negative_sentiment")]),  # in proportion
    (0.25, None, [(100.0, 0.05, "positive_sentiment")]),
    (-0.5, True, [(0.0, 0.3, "complaint"), (0.0, 0.1, "negative_sentiment")]),
])
def test_voice_signals(sentiment: float | None, complaint: bool | None,
                       expected: list[tuple[float, float, str]]) -> None:
    assert voice_signals(sentiment, complaint) == expected


def test_a_complaint_alone_puts_the_customer_at_risk() -> None:
    # 70, then the complaint (0.3 of the way to 0): 49, then the handled contact's own
    # experience (0.15 of the way to 85): 54.4, above the at-risk line of 40.
    _, out, _ = fold(None, call("a", 0, complaint=True), ts(0), POLICY)
    assert [(a.alert, a.score, a.causes) for a in out.alerts] == [
        ("at_risk_entered", 54.4, ("complaint",))]
    assert out.updates[0].view["perception"] == {"before": 70.0, "after": 54.4}


def test_without_the_complaint_rule_the_score_alone_decides() -> None:
    policy = Policy(perception=PerceptionPolicy(at_risk_on_complaint=False))
    _, out, _ = fold(None, call("a", 0, complaint=True), ts(0), policy)
    assert out.alerts == []
    assert out.updates[0].view["perception"] == {"before": 70.0, "after": 54.4}


@pytest.mark.parametrize(("sentiment", "after"), [
    (None, 72.25), (0.0, 72.25), (-1.0, 57.8), (1.0, 77.8), (-0.4, 66.47)])
def test_sentiment_shifts_the_score_in_proportion(sentiment: float | None, after: float
                                                   ) -> None:
    extra: dict[str, Any] = {} if sentiment is None else {"sentiment": sentiment}
    _, out, _ = fold(None, call("a", 0, **extra), ts(0), POLICY)
    assert out.updates[0].view["perception"]["after"] == after


def test_the_fields_are_kept_and_shown_only_when_given() -> None:
    state, out, _ = fold(None, call("a", 0, sentiment=-0.4, complaint=False,
                                    topics=["refund", "long_wait"]), ts(0), POLICY)
    view = out.updates[0].view
    assert (view["sentiment"], view["complaint"], view["topics"]) == (
        -0.4, False, ["refund", "long_wait"])
    again = CustomerState.from_dict(orjson.loads(orjson.dumps(state.to_dict())))
    assert again.contacts["a"] == state.contacts["a"]
    assert again.contacts["a"].topics == ("refund", "long_wait")
    _, plain, _ = fold(None, call("b", 0), ts(0), POLICY)
    assert not {"sentiment", "complaint", "topics"} & set(plain.updates[0].view)
    stored = ContactRecord.of(call("b", 0)).to_list()
    assert len(stored) == 15  # as before the fields existed


def _event(**fields: Any) -> dict[str, Any]:
    return {"event_id": "e1", "occurred_at": at(1), "contact_id": "c1", "customer_id": "x",
            "started_at": at(0.9), "channel": "voice", "queue": "billing",
            "outcome": "handled", "agent_id": "a1", **fields}


@pytest.mark.parametrize(("fields", "reason", "names"), [
    ({"topics": [f"t{i}" for i in range(11)]}, RejectReason.INVALID_VALUE, "topics"),
    ({"topics": ["x" * 65]}, RejectReason.INVALID_VALUE, "topics[0]"),
    ({"topics": ["ok", ""]}, RejectReason.INVALID_VALUE, "topics[1]"),
    ({"topics": ["ok", 7]}, RejectReason.WRONG_TYPE, "topics[1]"),
    ({"topics": {"a": 1}}, RejectReason.WRONG_TYPE, "topics"),
    ({"sentiment": 1.01}, RejectReason.INVALID_VALUE, "sentiment"),
    ({"sentiment": True}, RejectReason.WRONG_TYPE, "sentiment"),
    ({"complaint": 1}, RejectReason.WRONG_TYPE, "complaint"),
])
def test_bad_analytics_are_dead_lettered_with_their_reason(
        fields: dict[str, Any], reason: RejectReason, names: str) -> None:
    result = validate_event("call-ended", _event(**fields))
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert result.message.startswith(f"call-ended.{names}:")


def test_bounds_are_accepted() -> None:
    result = validate_event("call-ended", _event(
        topics=["y" * 64] * 10, sentiment=-1, complaint=True))
    assert isinstance(result, CallEnded)
    assert (result.sentiment, result.complaint, result.topics) == (-1.0, True, ("y" * 64,) * 10)


def test_the_complaint_rule_setting() -> None:
    assert policy_of(load_settings({})).perception.at_risk_on_complaint is True
    off = load_settings({"CX_AT_RISK_ON_COMPLAINT": "false"})
    assert policy_of(off).perception.at_risk_on_complaint is False


def test_the_simulator_hears_worse_on_callbacks_long_waits_and_transfers() -> None:
    start = 1_780_000_000.0
    model = TrafficModel(start=start, contacts_per_second=0.2, customers=300, seed=3,
                         duplicate_share=0.0, malformed_share=0.0)
    calls = [orjson.loads(m.value) for m in model.advance(start + 2 * 86400)
             if m.kind == "call-ended"]
    heard = [c for c in calls if "sentiment" in c]
    assert {c["outcome"] for c in heard} == {"handled"}
    assert len(heard) > 0.8 * sum(1 for c in calls
                                  if c["outcome"] == "handled" and c["channel"] != "sms")
    for c in heard:
        assert -1 <= c["sentiment"] <= 1
        assert len(c["topics"]) <= 10
    callbacks = [c for c in heard if c.get("callback")]
    first = [c for c in heard if not c.get("callback")]
    long_waits = [c for c in heard if c["wait_seconds"] > 300]
    assert mean(c["sentiment"] for c in callbacks) < mean(c["sentiment"] for c in first) - 0.2
    assert mean(c["sentiment"] for c in long_waits) < mean(c["sentiment"] for c in heard)
    assert mean(c["complaint"] for c in callbacks) > mean(c["complaint"] for c in first)
    assert all("repeat_issue" in c["topics"] for c in callbacks)


def test_rules_at_their_defaults_leave_a_stored_policy_version_as_it_was() -> None:
    """A version stored before these rules existed still matches the default rules; rules
    set otherwise are stored and read back."""
    plain = policy_to_dict(Policy())["perception"]
    assert "at_risk_on_complaint" not in plain
    assert "segment_values" not in plain
    rules = Policy(perception=PerceptionPolicy(at_risk_on_complaint=False,
                                               segment_values={"gold": 900.0}))
    assert policy_from_dict(policy_to_dict(rules), "2").perception == rules.perception


def _voice_totals(events: list[CallEnded]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for event in events:
        _, out, _ = fold(None, event, event.header.occurred_at.timestamp(), POLICY)
        for bucket in out.counter_deltas.values():
            for field, n in bucket.items():
                dimension, name = field.split("|")
                if dimension == "queue:billing" and name in voice.FIELDS:
                    totals[name] = totals.get(name, 0) + n
    return totals


def test_the_worked_example_of_the_definitions() -> None:
    """docs/metrics-definitions.md, Speech analytics: the worked example."""
    events = [call("a", 0.1, "A", complaint=True, sentiment=-0.8),
              call("b", 0.2, "B", complaint=False, sentiment=0.4),
              call("c", 0.3, "C", sentiment=-0.2, outcome="abandoned"),
              call("d", 0.4, "D", complaint=False), call("e", 0.5, "E")]
    totals = _voice_totals(events)
    assert totals == {"voice_complaint_known": 3, "voice_complaints": 1,
                      "voice_sentiment_count": 3, "voice_sentiment_milli": -600}
    assert voice.complaint_rate(totals) == 1 / 3
    assert voice.sentiment_average(totals) == pytest.approx(-0.2)
    assert voice.answer(totals) == {
        "complaint_rate": 1 / 3, "complaints": 1, "analysed_for_complaints": 3,
        "sentiment": voice.sentiment_average(totals), "sentiment_answers": 3}


@pytest.mark.parametrize(("counts", "rate", "sentiment"), [
    ({}, None, None),
    ({"voice_complaint_known": 4, "voice_sentiment_count": 2, "voice_sentiment_milli": 0},
     0.0, 0.0),
    ({"voice_complaint_known": 4, "voice_complaints": 4, "voice_sentiment_count": 1,
      "voice_sentiment_milli": -1000}, 1.0, -1.0),
])
def test_rates(counts: dict[str, int], rate: float | None, sentiment: float | None) -> None:
    assert voice.complaint_rate(counts) == rate
    assert voice.sentiment_average(counts) == sentiment


def test_a_corrected_contact_moves_its_counts() -> None:
    state, out, _ = fold(None, call("a", 0, complaint=True), ts(0), POLICY)
    deltas = [out.counter_deltas]
    state, out, _ = fold(state, call("a", 0.5, complaint=False, sentiment=0.5,
                                     event_id="a-fixed"), ts(0.5), POLICY)
    deltas.append(out.counter_deltas)
    totals: dict[str, int] = {}
    for d in deltas:
        for bucket in d.values():
            for field, n in bucket.items():
                if field.startswith("all|voice_"):
                    totals[field] = totals.get(field, 0) + n
    assert {k: n for k, n in totals.items() if n} == {
        "all|voice_complaint_known": 1, "all|voice_sentiment_count": 1,
        "all|voice_sentiment_milli": 500}


@pytest.mark.parametrize("extra", [
    {}, {"customer_value": None}, {"customer_value": 12.5, "sentiment": -1, "complaint": True,
                                   "topics": ["refund"]}])
def test_the_enriched_view_matches_its_schema(extra: dict[str, Any]) -> None:
    schema = json.loads((ROOT / "schemas/contact-enriched.schema.json").read_text())
    _, out, _ = fold(None, call("a", 0, **extra), ts(0), POLICY)
    view = orjson.loads(orjson.dumps(out.updates[0].view))
    assert list(Draft202012Validator(schema).iter_errors(view)) == []
    assert {k: view[k] for k in extra} == extra


def _topic_fields(*events: Any, caps: LabelCaps | None = None) -> dict[str, int]:
    """The counter fields of the topic dimensions after the events, one customer."""
    state = new_state(events[0])
    total: dict[BucketKey, list[int]] = {}
    for i, event in enumerate(events):
        apply_event(state, event)
        merge_counts(total, settle(state, ts(i * 0.1), POLICY, caps).counts)
    return {f: n for bucket in expand(total).values() for f, n in bucket.items()
            if f.startswith(("topic:", "queue_topic:"))}


def test_each_topic_counts_the_contact_once_over_all_queues_and_in_its_queue() -> None:
    fields = _topic_fields(
        call("a", 0, queue="bil>ling", complaint=True, sentiment=-0.5,
             topics=["invoice", "refund", "invoice"]),
        call("b", 0.1, queue="sales", complaint=False, topics=["invoice"]),
        call("c", 0.2, queue="sales", sentiment=0.25))  # analysed, no topic
    assert fields == {
        "topic:invoice|contacts": 2, "topic:invoice|voice_complaint_known": 2,
        "topic:invoice|voice_complaints": 1, "topic:invoice|voice_sentiment_count": 1,
        "topic:invoice|voice_sentiment_milli": -500,
        "topic:refund|contacts": 1, "topic:refund|voice_complaint_known": 1,
        "topic:refund|voice_complaints": 1, "topic:refund|voice_sentiment_count": 1,
        "topic:refund|voice_sentiment_milli": -500,
        # the queue's `>` is escaped: the separator stays unambiguous
        "queue_topic:bil%3Eling>invoice|contacts": 1,
        "queue_topic:bil%3Eling>invoice|voice_complaint_known": 1,
        "queue_topic:bil%3Eling>invoice|voice_complaints": 1,
        "queue_topic:bil%3Eling>invoice|voice_sentiment_count": 1,
        "queue_topic:bil%3Eling>invoice|voice_sentiment_milli": -500,
        "queue_topic:bil%3Eling>refund|contacts": 1,
        "queue_topic:bil%3Eling>refund|voice_complaint_known": 1,
        "queue_topic:bil%3Eling>refund|voice_complaints": 1,
        "queue_topic:bil%3Eling>refund|voice_sentiment_count": 1,
        "queue_topic:bil%3Eling>refund|voice_sentiment_milli": -500,
        "queue_topic:sales>invoice|contacts": 1,
        "queue_topic:sales>invoice|voice_complaint_known": 1,
    }
    assert voice.complaint_rate({k.split("|")[1]: v for k, v in fields.items()
                                 if k.startswith("topic:invoice|")}) == 0.5


def test_topics_beyond_the_cap_are_counted_once_under_other() -> None:
    caps = LabelCaps(queues=5, segments=5, agents=5, topics=1)
    fields = _topic_fields(
        call("a", 0, complaint=True, topics=["first"]),
        call("b", 0.1, complaint=True, topics=["second", "third", "first"]), caps=caps)
    assert {f: n for f, n in fields.items() if f.startswith("topic:")
            and f.endswith("|contacts")} == {"topic:first|contacts": 2,
                                             "topic:other|contacts": 1}
    assert len(caps.topic.folded) == 2


def test_a_verdict_change_retracts_the_topics_counts_exactly() -> None:
    # a survey answer changes the contact's verdict: its counts move, the topics' stay
    fields = _topic_fields(call("a", 0, complaint=True, topics=["invoice"]),
                           survey("a", 0.1, resolved=False))
    assert fields["topic:invoice|contacts"] == 1
    assert fields["topic:invoice|voice_complaints"] == 1


def test_a_counted_contact_survives_storage_with_its_topics() -> None:
    state, _, _ = fold(None, call("a", 0, complaint=True, topics=["x", "y"]), ts(0), POLICY)
    stored = orjson.loads(orjson.dumps(state.emitted["a"].counted))
    assert Counted.from_tuple(stored).topics == ("x", "y")
    older = Counted.from_tuple(stored[:31])  # stored before topics were counted
    assert older.topics == ()


def test_topic_gauges_per_window_centre_and_queue_with_the_pairs_bounded() -> None:
    registry = CollectorRegistry()
    gauges = SurveyTruthGauges(registry, ["window", "queue"], "policy_version")
    recent: dict[str, dict[str, int]] = {
        "topic:invoice": {"contacts": 4, "voice_complaint_known": 4, "voice_complaints": 1,
                          "voice_sentiment_count": 2, "voice_sentiment_milli": -300},
        "queue_topic:bil%3Eling>invoice": {"contacts": 4, "voice_complaint_known": 2,
                                           "voice_complaints": 2},
        "queue:billing": {"contacts": 9, "voice_complaint_known": 9, "voice_complaints": 9},
    }
    for i in range(QUEUE_TOPIC_SERIES + 5):  # quieter pairs than the one above
        recent[f"queue_topic:q{i}>t"] = {"contacts": 1, "voice_complaint_known": 1}
    gauges.add_topics("1h", recent, "1")
    gauges.publish()

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"window": "1h", "policy_version": "1",
                                                **labels})

    assert value("cx_topic_complaint_ratio", queue="", topic="invoice") == 0.25
    assert value("cx_topic_sentiment_average", queue="", topic="invoice") == -0.15
    assert value("cx_topic_complaint_ratio", queue="bil>ling", topic="invoice") == 1.0
    assert value("cx_topic_sentiment_average", queue="bil>ling", topic="invoice") is None
    assert value("cx_topic_complaint_ratio", queue="billing", topic="") is None
    series = [s for m in registry.collect() if m.name == "cx_topic_complaint_ratio"
              for s in m.samples]
    assert len(series) == 1 + QUEUE_TOPIC_SERIES
    # at equal counts, by queue name: q95 to q99 come last and are left out
    assert value("cx_topic_complaint_ratio", queue="q99", topic="t") is None
    assert value("cx_topic_complaint_ratio", queue="q204", topic="t") == 0.0
