"""The outbox: outputs committed with the states they come from, published to Kafka after.

A commit appends its outputs to the partition's outbox in the same atomic write as the states,
so a crash between the commit and the publication loses nothing: the next batch of the
partition publishes what is left over first, then the outbox is trimmed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson

from service.service_layer.ports import ContactView, OutputRecord

# Kinds of outbox items: an enriched contact, a customer alert, a dead letter; `tombstone`
# and `erased` are written by `cx-stream erase` (service/adapters/lua/erase_partition.lua).
CONTACT, ALERT, DEAD, TOMBSTONE, ERASED = "contact", "alert", "dead", "tombstone", "erased"
OutboxEntry = tuple[str, str | None, int, bytes]  # kind, key, version, value


@dataclass(frozen=True, slots=True)
class Topics:
    """The output topics."""

    dead_letter: str
    contact_enriched: str
    customer_alerts: str


def outbox_item(kind: str, key: str | None, version: int, value: bytes) -> bytes:
    """An outbox entry: a small JSON header line, then the value bytes as they will be sent."""
    return orjson.dumps([kind, key, version]) + b"\n" + value


def parse_outbox_item(item: bytes) -> OutboxEntry:
    header, _, value = item.partition(b"\n")
    kind, key, version = orjson.loads(header)
    return kind, key, version, value


@dataclass
class Publication:
    """What publishing some partitions' outboxes takes: the records to send, how many items
    to trim per partition, the contact views to store and those to delete."""

    records: list[OutputRecord]
    published: dict[int, int]
    contacts: list[ContactView]
    gone: list[str]


def publication(outputs: Mapping[int, Sequence[OutboxEntry]],
                leftovers: Mapping[int, Sequence[bytes]], topics: Topics) -> Publication:
    """Kafka records for the outbox items (those left over from before, then this batch's
    `outputs`), per partition; contact views of erased customers (a tombstone item) are
    deleted, outputs withdrawn by an erasure (`erased`) are not sent."""
    records: list[OutputRecord] = []
    contacts: dict[str, tuple[int, bytes]] = {}
    gone: set[str] = set()
    published: dict[int, int] = {}
    for partition, items in outputs.items():
        earlier = leftovers.get(partition, [])
        published[partition] = len(earlier) + len(items)
        # This batch's items are at hand; only those left over are parsed.
        for kind, name, version, value in [*map(parse_outbox_item, earlier), *items]:
            key = name.encode() if name is not None else None
            if kind == CONTACT and name is not None:
                records.append((topics.contact_enriched, key, value))
                seen = contacts.get(name)
                if seen is None or seen[0] < version:
                    contacts[name] = (version, value)
                gone.discard(name)
            elif kind == ALERT:
                records.append((topics.customer_alerts, key, value))
            elif kind == TOMBSTONE and name is not None:
                records.append((topics.contact_enriched, key, None))
                contacts.pop(name, None)
                gone.add(name)
            elif kind == ERASED:
                continue  # an output of an erased customer, withdrawn before publication
            else:
                records.append((topics.dead_letter, key, value))
    return Publication(records, published,
                       [(c, ver, view) for c, (ver, view) in contacts.items()], sorted(gone))
