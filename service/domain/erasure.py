"""Erasure of a customer (GDPR Art. 17, PIPL Art. 47): the pure parts.

An erased customer is remembered only as a keyed hash of their id (HMAC-SHA256 with the
operator's erasure key), so that later or replayed events of theirs can be recognised and
dropped without the id itself being kept anywhere.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_ID_CHARS = 128  # the contract's limit on customer_id
ERASED_ALERT = "customer_erased"
_KEY_CHECK = b"cx-stream erasure key check"


def digest(key: bytes, customer_id: str) -> bytes:
    """The keyed hash an erased customer is remembered by."""
    return hmac.digest(key, customer_id.encode("utf-8"), "sha256")


def key_fingerprint(key: bytes) -> str:
    """A value that tells whether two keys are the same without revealing either: stored
    with the suppression list, so a worker given another key refuses to run."""
    return hmac.digest(key, _KEY_CHECK, "sha256").hex()


def parse_ids(lines: Iterable[str]) -> list[str]:
    """Customer ids of an id file: one a line, taken as written (only the line break is
    removed: an id may hold spaces); empty lines are skipped. Order kept, duplicates dropped.

    Raises ValueError naming the line of an id longer than the contract allows."""
    out: dict[str, None] = {}
    for number, line in enumerate(lines, 1):
        text = line.rstrip("\r\n")
        if not text:
            continue
        if len(text) > MAX_ID_CHARS:
            raise ValueError(f"line {number}: a customer id has at most {MAX_ID_CHARS} "
                             f"characters, this one {len(text)}")
        out[text] = None
    return list(out)


def check_ids(ids: Iterable[str]) -> list[str]:
    """The ids given on the command line, checked as `parse_ids` checks a file's."""
    out: dict[str, None] = {}
    for text in ids:
        if not text or len(text) > MAX_ID_CHARS:
            raise ValueError(f"a customer id has 1 to {MAX_ID_CHARS} characters, got "
                             f"{len(text)}")
        out[text] = None
    return list(out)


def names_customer(view: Mapping[str, Any], ids: set[str]) -> bool:
    """Whether a contact view (from Redis or the topic) names one of the customers; anything
    else in it is ignored."""
    customer = view.get("customer_id")
    return isinstance(customer, str) and customer in ids


def erased_record(customer_id: str, at: str) -> dict[str, Any]:
    """The customer-alerts record that tells downstream systems a customer was erased
    (schemas/customer-alerts.schema.json)."""
    return {"customer_id": customer_id, "alert": ERASED_ALERT, "at": at}


@dataclass
class ErasureTally:
    """What one run of `cx-stream erase` did, summed over customers and policy versions."""

    customers: int = 0
    newly: int = 0  # ids that were not on the suppression list before
    states: int = 0
    timers: int = 0
    outbox: int = 0  # outputs not yet published, neutralised
    views: int = 0
    tombstones: int = 0
    records: int = 0  # customer-alerts records
    versions: list[str] = field(default_factory=list)

    @property
    def keys(self) -> int:
        """Redis keys deleted (states and contact views)."""
        return self.states + self.views

    def summary(self, contact_topic: str, alert_topic: str) -> str:
        already = self.customers - self.newly
        head = (f"erased {self.customers:,} customer{'s' if self.customers != 1 else ''} "
                f"({self.newly:,} newly, {already:,} already on the suppression list)")
        records = (f"{self.records:,} erasure record{'s' if self.records != 1 else ''} to "
                   f"{alert_topic}")
        if not (self.states or self.timers or self.outbox or self.views or self.tombstones):
            return f"{head}: nothing of them was left to delete; published {records}"
        return (f"{head}: deleted {self.states:,} customer states, {self.timers:,} timers, "
                f"{self.outbox:,} unpublished outputs and {self.views:,} contact views under "
                f"policy versions {', '.join(self.versions)}; published {self.tombstones:,} "
                f"tombstones to {contact_topic} and {records}; hour counters kept (they hold "
                f"no personal data)")

    def audit(self, by: str, at: str) -> dict[str, Any]:
        """The audit line: who, when, how much; never the ids."""
        return {"at": at, "by": by, "customers": self.customers, "newly_erased": self.newly,
                "keys_deleted": self.keys, "states": self.states, "timers": self.timers,
                "outbox_items": self.outbox, "contact_views": self.views,
                "tombstones": self.tombstones, "records": self.records,
                "policy_versions": list(self.versions)}
