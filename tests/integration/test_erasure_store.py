"""The Redis side of `cx-stream erase` (service/adapters/erasure_store.py) with the worker's
pipeline on a real Redis and Kafka: a sweep makes states kept in memory untrusted, a batch
checked against an older suppression list is checked again, and outputs of an erased customer
not yet published are withdrawn and followed by tombstones."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
import pytest

from service.adapters.erasure_store import ErasureStore
from service.domain.erasure import digest, key_fingerprint
from service.erase import policy_versions
from service.service_layer.ingest import InputMessage
from service.service_layer.outbox import outbox_item, parse_outbox_item
from service.service_layer.ports import OutputRecord
from service.service_layer.suppression import Suppression
from tests.integration.test_state_cache import PARTITION, Feed, Rig, cache
from tests.support.stack import Stack

pytestmark = pytest.mark.integration
KEY = b"integration-erasure-key"
PARTITIONS = 6


def test_sweep_makes_states_in_memory_untrusted(stack: Stack) -> None:
    """Without a suppression list, the customer's next event starts a new state: the state
    the worker kept in memory is not written back."""

    async def scenario() -> None:
        async with Rig(stack) as rig:
            feed = Feed(rig.ns)
            processor, _ = rig.processor(cache=cache())
            await processor.process([feed.call("c1", 0), feed.call("c2", 1),
                                     feed.call("c9", 1, "cust-2")])
            store = rig.store()
            latest = await store.read_recent(PARTITIONS, 0)
            assert sorted(c for _, _, c in latest) == ["c1", "c2", "c9"]
            erasure = ErasureStore(store.client, rig.ns.name)
            swept = await erasure.sweep(store, PARTITIONS, 1, ["cust-1", "cust-x"], [])
            assert sum(s.states for s in swept) == 1
            assert sorted(swept[PARTITION].contacts) == ["c1", "c2"]
            # their contacts leave the latest contacts too
            assert [c for _, _, c in await store.read_recent(PARTITIONS, 0)] == ["c9"]
            await processor.process([feed.call("c3", 2)])
            data = (await store.load({PARTITION: ["c:cust-1", "c:cust-2"]}))[PARTITION]
            state = data.state("c:cust-1")
            assert state is not None
            assert sorted(state.contacts) == ["c3"]
            other = data.state("c:cust-2")
            assert other is not None
            assert sorted(other.contacts) == ["c9"]
            assert data.clock.erasures == 1

    asyncio.run(scenario())


def test_a_batch_checked_before_the_erasure_is_checked_again(stack: Stack) -> None:
    async def scenario() -> None:
        async with Rig(stack) as rig:
            feed = Feed(rig.ns)
            store = rig.store()
            erasure = ErasureStore(store.client, rig.ns.name)
            processor, metrics = rig.processor(cache=cache())
            suppression = Suppression(erasure, KEY)
            processor._suppression = suppression
            await processor.process([feed.call("c1", 0), feed.call("c9", 0.5, "cust-2")])
            assert suppression.loaded
            assert len(suppression) == 0
            # Erased after the worker read its (empty) list: the next batch passes the check
            # at decoding, and the clock's erasure generation makes the worker read it again.
            assert await erasure.claim_key(key_fingerprint(KEY))
            new, generation = await erasure.add([digest(KEY, "cust-1")])
            assert new == [True]
            await erasure.sweep(store, PARTITIONS, generation, ["cust-1"], [])
            other_event = feed.call("c10", 0.9, "cust-2")
            last = feed.call("c2", 1)
            outcome = await processor.process([other_event, last])
            assert outcome.suppressed == 1
            assert outcome.applied == 1
            assert metrics.suppressed_by_topic[rig.ns.topic("call-ended")]._value.get() == 1  # type: ignore[attr-defined]
            data = (await store.load({PARTITION: ["c:cust-1", "c:cust-2"]}))[PARTITION]
            assert data.state("c:cust-1") is None
            other = data.state("c:cust-2")
            assert other is not None
            assert sorted(other.contacts) == ["c10", "c9"]
            # The dropped event's offset is recorded as read: the partition is not behind.
            assert data.clock.offsets[rig.ns.topic("call-ended")] == last.offset
            assert suppression.generation == generation
            # An event of theirs in a later batch is dropped at decoding, and so is an invalid
            # message keyed by their id (a dead letter would copy it).
            feed.offsets["call-ended"] += 1
            broken = InputMessage(rig.ns.topic("call-ended"), PARTITION,
                                  feed.offsets["call-ended"], b"cust-1", b"{broken", None)
            outcome = await processor.process([feed.call("c3", 2), broken])
            assert (outcome.suppressed, outcome.applied, outcome.invalid) == (2, 0, 0)

    asyncio.run(scenario())


def test_unpublished_outputs_are_withdrawn_and_followed_by_tombstones(stack: Stack) -> None:
    async def scenario() -> None:
        async with Rig(stack) as rig:
            feed = Feed(rig.ns)
            store = rig.store()
            outbox = store.key(PARTITION, "outbox")

            def view(customer: str, contact: str) -> bytes:
                return orjson.dumps({"customer_id": customer, "contact_id": contact})

            items = [outbox_item("alert", "cust-1", 1, b"{}"),
                     outbox_item("contact", "c1", 1, view("cust-1", "c1")),
                     outbox_item("contact", "c7", 1, view("cust-2", "c7")),
                     outbox_item("dead", "cust-1", 0, b"{}"),
                     outbox_item("contact", "c8", 2, view("cust-1", "c8"))]
            await store.client.rpush(outbox, *items)
            await store.finish_outbox({}, [("c1", 1, view("cust-1", "c1"))])
            assert await store.read_contact("c1") is not None
            erasure = ErasureStore(store.client, rig.ns.name)
            swept = await erasure.sweep(store, PARTITIONS, 1, ["cust-1"], ["c1"])
            assert (swept[PARTITION].outputs, sorted(swept[PARTITION].contacts)) == (
                4, ["c1", "c8"])
            after = [parse_outbox_item(i) for i in await store.client.lrange(outbox, 0, -1)]
            assert [(kind, key) for kind, key, _, _ in after] == [
                ("erased", None), ("erased", None), ("contact", "c7"), ("erased", None),
                ("erased", None), ("tombstone", "c1"), ("tombstone", "c8")]
            # Only the swept partition was touched.
            assert all(s.outputs == 0 for p, s in enumerate(swept) if p != PARTITION)
            # The next batch of the partition publishes what is left, tombstones last, and
            # deletes the views of the tombstoned contacts.
            published: list[tuple[str, bytes | None, bytes | None]] = []
            processor, _ = rig.processor(cache=None)
            real = processor._sink

            class Recording:
                async def send(self, records: Sequence[OutputRecord]) -> None:
                    published.extend(records)
                    await real.send(records)

                def is_transient(self, exc: BaseException) -> bool:
                    return real.is_transient(exc)

            processor._sink = Recording()
            await processor.process([feed.call("c20", 0, "cust-3")])
            topic = rig.settings.topic_contact_enriched
            assert [(t, k, v is None) for t, k, v in published if t == topic][:3] == [
                (topic, b"c7", False), (topic, b"c1", True), (topic, b"c8", True)]
            assert not any(t == rig.settings.topic_customer_alerts for t, _, _ in published)
            assert await store.client.llen(outbox) == 0
            assert await store.read_contact("c1") is None
            assert await store.read_contact("c7") is not None

    asyncio.run(scenario())


def test_suppression_list_needs_the_key_it_was_made_with(stack: Stack) -> None:
    async def scenario() -> None:
        async with Rig(stack) as rig:
            store = rig.store()
            erasure = ErasureStore(store.client, rig.ns.name)
            empty = Suppression(erasure, None)
            await empty.load()  # nobody erased: no key needed
            assert not empty.erased("cust-1")
            assert await erasure.claim_key(key_fingerprint(KEY))
            await erasure.add([digest(KEY, "cust-1")])
            assert not await erasure.claim_key(key_fingerprint(b"another-key-of-16+"))
            members = await store.client.smembers(erasure.key("ids"))
            assert members == {digest(KEY, "cust-1").hex().encode()}  # never the id
            good = Suppression(erasure, KEY)
            await good.load()
            assert good.erased("cust-1")
            assert not good.erased("cust-2")
            assert not good.erased(None)
            for key in (None, b"another-key-of-16+"):
                with pytest.raises(Exception, match="CX_ERASURE_KEY"):
                    await Suppression(erasure, key).load()

    asyncio.run(scenario())


def test_views_naming_the_customer_are_found_and_deleted_in_every_version(stack: Stack) -> None:
    async def scenario() -> None:
        async with Rig(stack) as rig:
            prefix = rig.ns.name
            v1, v2 = rig.store(), rig.store(f"{prefix}:v2")

            def view(customer: str, contact: str) -> bytes:
                return orjson.dumps({"customer_id": customer, "contact_id": contact})

            # Contact ids of any characters, on many Redis Cluster slots (`{..}` is a tag).
            theirs = ["c1", "c{2}", "c*3 é"]
            await v1.finish_outbox({}, [(c, 1, view("cust-1", c)) for c in theirs]
                                   + [("c9", 1, view("cust-2", "c9"))])
            await v2.finish_outbox({}, [("c1", 1, view("cust-1", "c1"))])
            await v1.client.set(f"{prefix}:policy:v2", b"{}")
            await v1.client.set(f"{prefix}:active-policy", b"3")
            assert await policy_versions(v1.client, prefix) == ["1", "2", "3"]
            erasure = ErasureStore(v1.client, prefix)
            assert await erasure.contacts_of(prefix, {"cust-1"}) == set(theirs)
            assert await erasure.contacts_of(f"{prefix}:v2", {"cust-1"}) == {"c1"}
            assert await erasure.contacts_of(prefix, {"nobody"}) == set()
            keys = [f"{p}:contact:{c}" for p in (prefix, f"{prefix}:v2") for c in theirs]
            assert await erasure.unlink(keys) == 4
            assert await erasure.unlink(keys) == 0
            for contact in theirs:
                assert await v1.read_contact(contact) is None
                assert await v2.read_contact(contact) is None
            assert await v1.read_contact("c9") is not None

    asyncio.run(scenario())
