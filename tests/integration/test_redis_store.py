from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.crc import key_slot

from service.adapters.redis_store import EventToApply, RedisEventStore, connect
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_apply_is_idempotent_per_event_id(stack: Stack) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[object, ...]:
        client = connect(stack.redis_url)
        store = RedisEventStore(client, prefix, dedup_seconds=3600)
        first = await store.apply({
            0: [EventToApply("call-ended", 5, "a"), EventToApply("transfer", 2, "b")],
            3: [EventToApply("call-ended", 9, "c")],
        })
        again = await store.apply({
            0: [EventToApply("call-ended", 6, "a"), EventToApply("call-ended", 7, "d")],
        })
        counts = await store.applied_counts()
        offsets = await store.applied_offsets()
        ttl = await client.ttl(f"{prefix}:{{p0}}:seen:a")
        await client.aclose()
        return first, again, counts, offsets, ttl

    first, again, counts, offsets, ttl = run(scenario())
    assert first == {0: [True, True], 3: [True]}
    assert again == {0: [False, True]}
    assert counts == {"call-ended": 3, "transfer": 1}
    assert offsets == {("call-ended", 0): 7, ("transfer", 0): 2, ("call-ended", 3): 9}
    assert 3500 < ttl <= 3600


def test_offsets_never_move_back(stack: Stack) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"

    async def scenario() -> dict[tuple[str, int], int]:
        client = connect(stack.redis_url)
        store = RedisEventStore(client, prefix, dedup_seconds=60)
        await store.apply({1: [EventToApply("transfer", 40, "x")]})
        await store.apply({1: [EventToApply("transfer", 12, "y")]})
        offsets = await store.applied_offsets()
        await client.aclose()
        return offsets

    assert run(scenario()) == {("transfer", 1): 40}


def test_one_partition_keys_share_a_cluster_slot() -> None:
    prefix = "cx"
    keys = [f"{prefix}:{{p4}}:applied", f"{prefix}:{{p4}}:offsets",
            f"{prefix}:{{p4}}:seen:some-event-id", f"{prefix}:{{p4}}:seen:other"]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert key_slot(b"cx:{p4}:applied") != key_slot(b"cx:{p5}:applied")
