"""Finding the events that make a batch fail (bisection), and dead letters that always fit."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from service.cli import build_parser
from service.domain.events import ContactEvent
from service.redrive import SEND, Selection, choose, original
from service.service_layer import quarantine
from service.service_layer.dead_letters import (
    InputMessage,
    dead_letter_key,
    dead_letter_record,
    output_stub,
)
from tests.unit.builders import call

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Draft202012Validator(json.loads((ROOT / "schemas/dead-letter.schema.json").read_text()))
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
Items = list[tuple[InputMessage, ContactEvent]]


class Poisoned:
    """A trial that fails whenever one of the `poison` events is among those tried (no
    store): what the bisection finds, and how many trials it takes."""

    def __init__(self, poison: set[int]) -> None:
        self.poison = poison
        self.trials: list[list[int]] = []

    async def __call__(self, indexes: list[int]) -> BaseException | None:
        self.trials.append(indexes)
        hit = sorted(self.poison.intersection(indexes))
        return TypeError(f"poison {hit}") if hit else None


KINDS = {"t": "call-ended"}


def _items(customers: list[str]) -> Items:
    return [(InputMessage("t", 0, i, c.encode(), b"{}", None),
             call(f"c{i}", i * 0.01, customer=c)) for i, c in enumerate(customers)]


def test_bisection_finds_exactly_the_failing_customers_and_keeps_every_other() -> None:
    units = [[i] for i in range(64)]
    trial = Poisoned({5, 40})
    kept: list[int] = []
    bad = asyncio.run(quarantine.bisect(kept, units, trial))
    assert [unit for unit, _ in bad] == [[5], [40]]
    assert "poison [5]" in str(bad[0][1])
    assert sorted(kept) == [i for i in range(64) if i not in (5, 40)]
    # two culprits among 64: a few trials per culprit (log2 64 = 6), not one per event
    assert len(trial.trials) <= 2 * 2 * 6 + 1


def test_culprits_are_the_failing_events_of_a_failing_customer_only() -> None:
    # customers a, b, c interleaved; the poison is b's second event (index 4)
    customers = ["a", "b", "c", "a", "b", "c", "b"]
    trial = Poisoned({4})
    found = asyncio.run(quarantine.culprits(_items(customers), trial, KINDS))
    assert list(found) == [("t", 4)]
    assert found[("t", 4)] == "call-ended: TypeError: poison [4]"
    # every trial keeps the batch order
    assert all(t == sorted(t) for t in trial.trials)


def test_a_batch_that_fails_without_any_of_its_events_has_no_culprit() -> None:
    async def broken(indexes: list[int]) -> BaseException | None:
        return RuntimeError("the commit script is missing")

    assert asyncio.run(quarantine.culprits(_items(["a", "b"]), broken, KINDS)) == {}


def _message(value: bytes | None, key: bytes | None = b"cust-1") -> InputMessage:
    return InputMessage("call-ended", 2, 17, key, value, 1_780_000_000_000)


def test_a_small_dead_letter_carries_the_whole_value_and_key() -> None:
    value = orjson.dumps({"event_id": "e-1", "notes": "x" * 100})
    record = dead_letter_record(_message(value), "missing_field", "call-ended.queue: missing",
                                NOW)
    SCHEMA.validate(record)
    assert base64.b64decode(record["value_base64"]) == value
    assert record["truncated"] is False
    assert record["value_bytes"] == len(value)
    assert record["value_sha256"] == hashlib.sha256(value).hexdigest()
    assert record["key"] == "cust-1"
    assert record["key_bytes"] == 6
    assert record["event_id"] == "e-1"


@pytest.mark.parametrize("max_copy", [0, 1000, 64 * 1024])
def test_a_dead_letter_of_a_large_value_and_key_is_cut_with_length_and_hash(
        max_copy: int) -> None:
    value = orjson.dumps({"event_id": "e-2", "notes": "é" * 400_000})  # 800 KB
    key = "ключ".encode() * 20_000  # 160 KB of two-byte characters
    record = dead_letter_record(_message(value, key), "too_large", "over the limit", NOW,
                                max_copy)
    SCHEMA.validate(record)
    assert record["truncated"] is True
    assert base64.b64decode(record["value_base64"]) == value[:max_copy]
    assert base64.b64decode(record["key_base64"]) == key[:max_copy]
    assert record["value_bytes"] == len(value)
    assert record["value_sha256"] == hashlib.sha256(value).hexdigest()
    assert record["key_bytes"] == len(key)
    assert record["key_sha256"] == hashlib.sha256(key).hexdigest()
    assert key.decode().startswith(record["key"])
    assert dead_letter_key(_message(value, key), max_copy) == key[:max_copy]
    # the record fits easily under Kafka's 1 MB default
    assert len(orjson.dumps(record)) < 4 * max_copy + 2000


def test_a_dead_letter_without_key_or_value() -> None:
    record = dead_letter_record(_message(None, None), "not_json", "no value", NOW)
    SCHEMA.validate(record)
    assert record["truncated"] is False
    assert record["value_base64"] is None
    assert record["value_bytes"] is None
    assert record["key_sha256"] is None


def _stub(topic: str, key: bytes | None, value: bytes) -> Any:
    return orjson.loads(output_stub(topic, key, value, 1_048_576, NOW, "dead"))


def test_an_enriched_record_too_large_for_kafka_is_named_by_a_small_dead_letter() -> None:
    view = orjson.dumps({"contact_id": "c-1", "notes": "x" * 2_000_000})
    stub = _stub("contact-enriched", b"c-1", view)
    SCHEMA.validate(stub)
    assert stub["reason"] == "processing_error"
    assert stub["topic"] == "contact-enriched"
    assert stub["partition"] is None
    assert stub["value_base64"] is None
    assert stub["truncated"] is True
    assert stub["value_bytes"] == len(view)
    assert stub["value_sha256"] == hashlib.sha256(view).hexdigest()
    assert "over the limit of 1048576 bytes" in stub["message"]
    assert len(orjson.dumps(stub)) < 2000


def test_a_dead_letter_too_large_for_kafka_loses_its_copies_only() -> None:
    value = b"v" * 900_000
    record = dead_letter_record(_message(value), "too_large", "over", NOW, 16 * 1024 * 1024)
    stub = _stub("dead", b"cust-1", orjson.dumps(record))
    SCHEMA.validate(stub)
    assert (stub["topic"], stub["partition"], stub["offset"]) == ("call-ended", 2, 17)
    assert stub["reason"] == "too_large"
    assert stub["truncated"] is True
    assert stub["value_base64"] is None
    assert stub["key_base64"] is None
    assert stub["value_sha256"] == hashlib.sha256(value).hexdigest()
    assert stub["message"].startswith("over (")


# -- redrive: which dead letters go back ------------------------------------------------------

INPUTS = ("call-ended", "transfer", "survey-answered")


def _dead(**changes: Any) -> dict[str, Any]:
    record = dead_letter_record(_message(b'{"event_id": "e-9"}'), "missing_field", "m", NOW)
    record.update(changes)
    return record


def test_redrive_sends_a_whole_dead_letter_back_with_its_original_bytes() -> None:
    record = _dead()
    assert choose(record, Selection(), INPUTS) == SEND
    assert original(record) == (b"cust-1", b'{"event_id": "e-9"}')
    assert original(_dead(key_base64=None, value_base64=None)) == (None, None)


@pytest.mark.parametrize(("record", "selection", "why"), [
    (_dead(reason="too_late"), Selection(reasons=frozenset({"missing_field"})), "other reason"),
    (_dead(), Selection(since=datetime(2026, 12, 1, tzinfo=UTC)), "outside the time range"),
    (_dead(), Selection(until=NOW), "outside the time range"),
    (_dead(truncated=True), Selection(), "copy cut (cannot be redriven)"),
    (_dead(redriven=True), Selection(), "redriven before (use --include-redriven)"),
    (_dead(topic="contact-enriched", partition=None), Selection(), "not from an input topic"),
    ([1, 2], Selection(), "unreadable"),
])
def test_redrive_skips_what_it_must_not_send(record: Any, selection: Selection,
                                             why: str) -> None:
    assert choose(record, selection, INPUTS) == why


def test_redrive_sends_a_redriven_dead_letter_again_only_when_asked() -> None:
    record = _dead(redriven=True)
    assert choose(record, Selection(include_redriven=True), INPUTS) == SEND
    assert choose(_dead(), Selection(since=NOW, until=datetime(2026, 12, 1, tzinfo=UTC)),
                  INPUTS) == SEND


def test_the_redrive_command_line() -> None:
    args = build_parser().parse_args(
        ["redrive", "--reason", "processing_error", "--reason", "too_large", "--since",
         "2026-11-30T00:00:00Z", "--dry-run"])
    assert args.reason == ["processing_error", "too_large"]
    assert args.since == datetime(2026, 11, 30, tzinfo=UTC)
    assert args.dry_run is True
    with pytest.raises(SystemExit):
        build_parser().parse_args(["redrive", "--since", "2026-11-30T00:00:00"])
