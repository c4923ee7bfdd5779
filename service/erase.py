"""`cx-stream erase`: erase customers (GDPR Art. 17, PIPL Art. 47) so that nothing brings
them back.

In this order, so that running it again after an interruption finishes the work:
1. their keyed hashes join the suppression list and the erasure generation rises: from then
   on workers and `rebuild` drop their events (service/service_layer/suppression.py);
2. their contacts are found in the stored contact views of every policy version, and on
   the compacted contact-enriched topic (contacts older than the views' time-to-live);
3. every partition of every policy version is swept (erase_partition.lua): states, timers
   and unpublished outputs go, the clock moves on (no worker trusts its states in memory of
   the partition any more, a batch in flight is redone) and a tombstone item per contact is
   queued behind any output of theirs a worker may have in hand;
4. tombstones for their contacts go to contact-enriched (compacted) and one record per
   customer to customer-alerts;
5. the contact views are deleted, and an audit line (who, when, how many; never the ids) is
   appended to the audit list.
Hour counters are kept: they hold no customer ids.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.adapters import redis_state
from service.adapters.connections import kafka_options, redis_options
from service.adapters.erasure_store import ErasureStore, erasure_key, glob_escape
from service.adapters.kafka_admin import ensure_layout, partition_counts
from service.adapters.kafka_publish import EventPublisher
from service.adapters.redis_modes import RedisClient
from service.adapters.redis_state import RedisState
from service.config import Settings, state_prefix
from service.domain.erasure import (
    ErasureTally,
    check_ids,
    digest,
    erased_record,
    key_fingerprint,
    names_customer,
    parse_ids,
)

SWEEP_IDS = 200  # customers per sweep script call


class Refused(Exception):
    """The erasure cannot be done as asked; nothing was changed."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")



def operator() -> str:
    """Who runs the command: the login and host (the audit line's default `by`)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


async def policy_versions(client: RedisClient, key_prefix: str) -> list[str]:
    """Every policy version that may hold state: 1, the served one, each with stored rules."""
    found = {"1"}
    active = await client.get(f"{key_prefix}:active-policy")
    if active is not None:
        found.add(active.decode() if isinstance(active, bytes) else str(active))
    head = f"{key_prefix}:policy:v"
    async for key in client.scan_iter(match=f"{glob_escape(head)}*", count=1000):
        name = key.decode() if isinstance(key, bytes) else str(key)
        found.add(name[len(head):])
    return sorted(found, key=lambda v: (len(v), v))


def _state(settings: Settings, client: RedisClient, version: str) -> RedisState:
    return RedisState(client, state_prefix(settings.key_prefix, version),
                      state_ttl=settings.state_idle_ttl, counter_ttl=settings.counter_retention,
                      contact_ttl=settings.contact_view_ttl)


async def contacts_on_topic(settings: Settings, ids: set[str]) -> set[str]:
    """Keys of the contact-enriched records (up to the end offsets when called) whose view
    names one of the customers: one pass over the compacted topic, without a consumer group."""
    topic = settings.topic_contact_enriched
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                **kafka_options(settings))
    await consumer.start()
    try:
        count = (await partition_counts(settings, [topic])).get(topic, 0)
        tps = [TopicPartition(topic, p) for p in range(count)]
        if not tps:
            return set()
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        theirs: dict[bytes, bool] = {}  # contact -> whether its latest record is theirs
        pending = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500, max_records=10_000)
            for msgs in batch.values():
                for m in msgs:
                    if m.key is None:
                        continue
                    if m.value is None:  # a tombstone already
                        if m.key in theirs:
                            theirs[m.key] = False
                        continue
                    try:
                        view = orjson.loads(m.value)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(view, dict) and names_customer(view, ids):
                        theirs[m.key] = True
                    elif m.key in theirs:
                        theirs[m.key] = False
            pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
        return {key.decode("utf-8", "replace") for key, latest in theirs.items() if latest}
    finally:
        await consumer.stop()


async def erase(settings: Settings, ids: Sequence[str], *, by: str, out: TextIO,
                scan_topic: bool = True) -> ErasureTally:
    """Erase the customers; print what was done and return it."""
    key = erasure_key(settings)
    if key is None:
        raise Refused("CX_ERASURE_KEY (or CX_ERASURE_KEY_FILE) is needed: erased customers are "
                      "remembered by a keyed hash of their id, and every worker needs the same "
                      "key to recognise their events")
    _, partitions = await ensure_layout(settings)
    client = redis_state.connect(settings.redis_url, **redis_options(settings))
    publisher: EventPublisher | None = None
    try:
        store = ErasureStore(client, settings.key_prefix)
        if not await store.claim_key(key_fingerprint(key)):
            raise Refused("CX_ERASURE_KEY is not the key the customers erased before were "
                          "recorded with; use that key")
        publisher = EventPublisher(settings)
        await publisher.start()
        new, generation = await store.add([digest(key, c) for c in ids])
        tally = ErasureTally(customers=len(ids), newly=sum(new))
        tally.versions = await policy_versions(client, settings.key_prefix)
        wanted = set(ids)
        contacts: set[str] = set()
        for version in tally.versions:
            contacts |= await store.contacts_of(state_prefix(settings.key_prefix, version),
                                                wanted)
        if scan_topic:
            contacts |= await contacts_on_topic(settings, wanted)
        known = sorted(contacts)
        for version in tally.versions:
            state = _state(settings, client, version)
            for start in range(0, len(ids), SWEEP_IDS):  # a script blocks Redis while it runs
                chunk = list(ids[start:start + SWEEP_IDS])
                for swept in await store.sweep(state, partitions, generation, chunk, known):
                    tally.states += swept.states
                    tally.timers += swept.timers
                    tally.outbox += swept.outputs
                    contacts.update(swept.contacts)
        for contact in sorted(contacts):
            await publisher.send_raw(settings.topic_contact_enriched, contact.encode(), None)
        at = _now()
        for customer in ids:
            await publisher.send_raw(settings.topic_customer_alerts, customer.encode(),
                                     orjson.dumps(erased_record(customer, at)))
        await publisher.flush()
        tally.tombstones, tally.records = len(contacts), len(ids)
        tally.views = await store.unlink([
            f"{state_prefix(settings.key_prefix, version)}:contact:{contact}"
            for version in tally.versions for contact in sorted(contacts)])
        line = tally.audit(by, at)
        await store.audit(line)
        print(tally.summary(settings.topic_contact_enriched, settings.topic_customer_alerts),
              file=out, flush=True)
        print(f"audit: {orjson.dumps(line).decode()}", file=out, flush=True)
        return tally
    finally:
        if publisher is not None:
            await publisher.close()
        await client.aclose()


def read_ids(args: Any, stdin: TextIO) -> list[str]:
    """The ids of the command line, then those of --from-file (`-`: standard input)."""
    ids = check_ids(args.customer_ids)
    if args.from_file:
        if args.from_file == "-":
            ids += parse_ids(stdin)
        else:
            with open(args.from_file, encoding="utf-8", newline="") as f:
                ids += parse_ids(f)
    return list(dict.fromkeys(ids))


def run_erase(settings: Settings, args: Any, out: TextIO) -> int:
    try:
        ids = read_ids(args, sys.stdin)
    except (OSError, ValueError) as exc:
        print(f"cx-stream erase: {exc}", file=sys.stderr)
        return 2
    if not ids:
        print("cx-stream erase: no customer id given", file=sys.stderr)
        return 2
    try:
        asyncio.run(erase(settings, ids, by=args.by or operator(), out=out,
                          scan_topic=not args.skip_topic_scan))
    except Refused as exc:
        print(f"cx-stream erase: {exc}", file=sys.stderr)
        return 2
    return 0
