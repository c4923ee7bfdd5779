"""The pure parts of erasure: keyed hashes, id files, the contacts a state names, the record
published, the summary and the audit line."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from jsonschema import Draft202012Validator

from service.cli import build_parser
from service.domain.erasure import (
    ErasureTally,
    check_ids,
    digest,
    erased_record,
    key_fingerprint,
    parse_ids,
)
from service.erase import read_ids

ROOT = Path(__file__).resolve().parents[2]
KEY = b"unit-test-erasure-key"


def test_digest_is_keyed_and_never_the_id() -> None:
    assert digest(KEY, "cust-1") == digest(KEY, "cust-1")
    assert digest(KEY, "cust-1") != digest(KEY, "cust-2")
    assert digest(KEY, "cust-1") != digest(b"another-key-0123", "cust-1")
    assert len(digest(KEY, "cust-1")) == 32
    assert b"cust-1" not in digest(KEY, "cust-1")
    # Ids are hashed as UTF-8, whatever they hold
    assert digest(KEY, "a b\t{}/%é😀") != digest(KEY, "a b\t{}/%e😀")
    assert key_fingerprint(KEY) != key_fingerprint(b"another-key-0123")
    assert key_fingerprint(KEY) == key_fingerprint(bytes(KEY))
    assert len(key_fingerprint(KEY)) == 64


def test_id_files_keep_ids_as_written() -> None:
    lines = ["cust-1\n", "\n", " spaced id \r\n", "cust-1\n", "tab\there", "\r\n"]
    assert parse_ids(lines) == ["cust-1", " spaced id ", "tab\there"]
    assert parse_ids([]) == []
    with pytest.raises(ValueError, match=r"line 2: .* at most 128 characters, this one 129"):
        parse_ids(["ok\n", "x" * 129 + "\n"])
    assert parse_ids(["x" * 128]) == ["x" * 128]


def test_command_line_ids_are_checked() -> None:
    assert check_ids(["b", "a", "b"]) == ["b", "a"]
    for bad in ("", "y" * 129):
        with pytest.raises(ValueError, match="1 to 128 characters"):
            check_ids([bad])


def test_read_ids_joins_arguments_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_bytes(b"cust-2\r\ncust-3\n\ncust-1\n")
    args = build_parser().parse_args(["erase", "cust-1", "--from-file", str(path),
                                      "--by", "ticket-1"])
    assert args.by == "ticket-1"
    assert read_ids(args, io.StringIO()) == ["cust-1", "cust-2", "cust-3"]
    stdin = SimpleNamespace(customer_ids=[], from_file="-")
    assert read_ids(stdin, io.StringIO("x\ny\n")) == ["x", "y"]


def test_erased_record_matches_the_schema() -> None:
    schema = json.loads((ROOT / "schemas/customer-alerts.schema.json").read_text())
    validator = Draft202012Validator(schema)
    record = erased_record("cust-1", "2026-11-30T10:00:00.000Z")
    assert record == {"customer_id": "cust-1", "alert": "customer_erased",
                      "at": "2026-11-30T10:00:00.000Z"}
    assert list(validator.iter_errors(record)) == []
    # An erasure record carries nothing else; an at-risk alert needs its fields.
    assert list(validator.iter_errors({**record, "score": 50.0}))
    assert list(validator.iter_errors({**record, "alert": "at_risk_left"}))
    alert = {"customer_id": "c", "alert": "at_risk_entered", "version": 1, "score": 30.0,
             "drop": 20.0, "causes": ["survey"], "at": "2026-11-30T10:00:00Z"}
    assert list(validator.iter_errors(alert)) == []


def test_summary_and_audit_line() -> None:
    tally = ErasureTally(customers=2, newly=1, states=2, timers=1, outbox=1, views=3,
                         tombstones=3, records=2, versions=["1", "2"])
    text = tally.summary("contact-enriched", "customer-alerts")
    assert text.startswith("erased 2 customers (1 newly, 1 already on the suppression list): "
                           "deleted 2 customer states, 1 timers, 1 unpublished outputs and 3 "
                           "contact views under policy versions 1, 2")
    assert "3 tombstones to contact-enriched and 2 erasure records to customer-alerts" in text
    line = tally.audit("ops@host", "2026-11-30T10:00:00.000Z")
    assert line["keys_deleted"] == 5
    assert (line["by"], line["customers"], line["newly_erased"]) == ("ops@host", 2, 1)
    again = ErasureTally(customers=1, newly=0, records=1, versions=["1"])
    assert again.summary("ce", "ca") == (
        "erased 1 customer (0 newly, 1 already on the suppression list): nothing of them "
        "was left to delete; published 1 erasure record to ca")
    assert again.audit("ops", "t")["keys_deleted"] == 0


def test_the_workers_check_uses_the_same_digest() -> None:
    from service.service_layer.suppression import Suppression

    suppression = Suppression(None, KEY)  # type: ignore[arg-type]  # no Redis: set directly
    assert not suppression.erased("cust-1")  # nobody erased
    suppression._digests = frozenset({digest(KEY, "cust-1"), digest(KEY, "a b\t{}/%é😀")})
    assert suppression.erased("cust-1")
    assert suppression.erased("a b\t{}/%é😀")
    assert not suppression.erased("cust-2")
    assert not suppression.erased(None)
    assert not Suppression(None, None).erased("cust-1")  # type: ignore[arg-type]


def test_views_name_a_customer_only_by_a_string_id() -> None:
    from service.domain.erasure import names_customer

    ids = {"cust-1"}
    assert names_customer({"customer_id": "cust-1", "contact_id": "c1"}, ids)
    assert not names_customer({"customer_id": "cust-2"}, ids)
    for odd in (None, ["cust-1"], {"a": 1}, 1):  # records on the topic may be anything
        assert not names_customer({"customer_id": odd}, ids)
    assert not names_customer({}, ids)
