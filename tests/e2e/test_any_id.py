"""Every id the event contract allows (any string of 1 to 128 characters) is reachable through
the API, percent-encoded in its path segment: events for such customers and contacts go
through a real worker, then each is read back by its id."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest

from service.adapters.kafka_admin import ensure_topics
from service.config import load_settings
from tests.support.stack import Namespace, Stack, Worker, produce, wait_until

pytestmark = pytest.mark.e2e

# One id of each class the report found unreachable, and a few more of the same kind.
ID_CLASSES = {
    "braces": "cust{1}",
    "slash": "acme/eu/42",
    "percent": "100%-sure %2F",
    "newline": "first\nsecond",
    "spaces_and_tab": " lead  and\ttab ",
    "zero_width_joiner": "\U0001F469\u200d\U0001F4BB",
    "emoji_128": "\U0001F600" * 128,
    "ascii_128": "x" * 128,
    "dot_dot": "..",
    "dot": ".",
    "query_like": "?a=1&b=2#frag",
    "backslash_quotes": "a\\b\"c'd",
    "control_and_nul": "a\x00b\x1fc",
    "plus_and_semicolon": "+1;2,3",
}


def segment(value: str) -> str:
    """The id as one path segment: every byte outside the unreserved characters percent-
    encoded, and `.` too when the id is `.` or `..` (clients drop such segments)."""
    encoded = quote(value, safe="")
    return encoded.replace(".", "%2E") if encoded in (".", "..") else encoded


def call(i: int, customer: str, contact: str) -> dict[str, object]:
    return {"event_id": f"ev-{i}", "occurred_at": f"2026-05-04T10:{i:02d}:00Z",
            "started_at": f"2026-05-04T10:{i:02d}:00Z", "contact_id": contact,
            "customer_id": customer, "channel": "voice", "queue": "billing",
            "outcome": "handled", "agent_id": "a-1"}


def test_every_id_class_round_trips_through_the_api(stack: Stack, tmp_path: Path) -> None:
    ns: Namespace = stack.namespace()
    asyncio.run(ensure_topics(load_settings(ns.settings_env())))
    # Each customer's contact id is of the same class (the emoji one: other emoji).
    contacts = {name: ("\U0001F603" * 128 if name == "emoji_128" else f"{value}#c")
                for name, value in ID_CLASSES.items()}
    contacts["ascii_128"] = "y" * 128
    records = [(ns.topic("call-ended"), customer.encode(),
                orjson.dumps(call(i, customer, contacts[name])))
               for i, (name, customer) in enumerate(ID_CLASSES.items())]
    asyncio.run(produce(stack.kafka_bootstrap, records))
    worker = Worker(ns, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        for name, customer in ID_CLASSES.items():
            wait_until(lambda c=customer: worker.get(
                f"/api/v1/customers/{segment(c)}")[0] == 200, timeout=60,
                what=f"customer of class {name} served")
            status, body = worker.get(f"/api/v1/customers/{segment(customer)}")
            summary = json.loads(body)
            assert status == 200, name
            assert summary["customer_id"] == customer, name
            assert [c["contact_id"] for c in summary["recent_contacts"]] == [contacts[name]]
            # The contact's view is stored after the commit that made the customer known
            # (finish_outbox): wait for it too.
            wait_until(lambda c=contacts[name]: worker.get(
                f"/api/v1/contacts/{segment(c)}")[0] == 200, timeout=60,
                what=f"contact of class {name} served")
            status, body = worker.get(f"/api/v1/contacts/{segment(contacts[name])}")
            assert status == 200, name
            view = json.loads(body)
            assert (view["contact_id"], view["customer_id"]) == (contacts[name], customer)
        # The same id with one character more or less is another customer: not found.
        status, body = worker.get(f"/api/v1/customers/{segment('cust{1}x')}")
        assert status == 404
        assert json.loads(body)["error"] == "no customer 'cust{1}x'"
        # `..` sent without encoding reaches the same customer: the server keeps the segment.
        assert worker.get("/api/v1/customers/..")[0] == 200
    finally:
        worker.stop()
