"""The JSON Schemas in schemas/ and the Python validation agree on one corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from service.domain.events import Rejection
from service.domain.validation import validate_event

ROOT = Path(__file__).resolve().parents[2]
CORPUS = json.loads((ROOT / "schemas/examples/corpus.json").read_text())["cases"]
# Cross-field rules JSON Schema cannot state; the schemas' descriptions name them.
BEYOND_SCHEMA = {"started_after_occurred"}


def _validator(kind: str) -> Draft202012Validator:
    schema = json.loads((ROOT / f"schemas/{kind}.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


VALIDATORS = {k: _validator(k) for k in ("call-ended", "transfer", "survey-answered")}


def _id(case: dict[str, Any]) -> str:
    return f"{case['kind']}: {case['note']}"


@pytest.mark.parametrize("case", CORPUS, ids=_id)
def test_python_validation_gives_the_expected_verdict(case: dict[str, Any]) -> None:
    result = validate_event(case["kind"], case["event"])
    if case["expect"] == "valid":
        assert not isinstance(result, Rejection), result
    else:
        assert isinstance(result, Rejection)
        assert result.reason.value == case["expect"], result.message


@pytest.mark.parametrize("case", CORPUS, ids=_id)
def test_json_schema_agrees(case: dict[str, Any]) -> None:
    errors = list(VALIDATORS[case["kind"]].iter_errors(case["event"]))
    schema_valid = not errors
    if case["expect"] in BEYOND_SCHEMA or case.get("beyond_schema"):
        assert schema_valid, "a rule beyond JSON Schema should pass the schema"
    else:
        assert schema_valid == (case["expect"] == "valid"), [e.message for e in errors]


def test_corpus_covers_every_kind_and_reason() -> None:
    kinds = {c["kind"] for c in CORPUS if c["expect"] == "valid"}
    assert kinds == {"call-ended", "transfer", "survey-answered"}
    reasons = {c["expect"] for c in CORPUS}
    assert {"missing_field", "wrong_type", "invalid_value", "bad_timestamp",
            "started_after_occurred", "not_object", "too_deep"} <= reasons


def test_beyond_schema_cases_are_rejected_by_the_service() -> None:
    marked = [c for c in CORPUS if c.get("beyond_schema")]
    assert marked, "the corpus shows the rules JSON Schema cannot state"
    assert all(c["expect"] != "valid" for c in marked)


def test_rejection_message_names_the_field() -> None:
    case = next(c for c in CORPUS if c["note"] == "unknown channel")
    result = validate_event(case["kind"], case["event"])
    assert isinstance(result, Rejection)
    assert result.message.startswith("call-ended.channel:")
    assert "carrier_pigeon" in result.message
