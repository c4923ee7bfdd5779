"""The Lua scripts on the test stack's Redis, one server or (CX_TEST_REDIS_MODE=cluster) a
Redis Cluster: a server that forgot the scripts, and keys of two partitions in one script."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from service.adapters.redis_state import RedisState, connect
from service.domain.partition import PartitionCommit
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


def _store(stack: Stack) -> RedisState:
    return RedisState(connect(stack.redis_url), f"t{uuid.uuid4().hex[:8]}", state_ttl=3600,
                      counter_ttl=3600, contact_ttl=3600)


def test_scripts_the_server_forgot_are_loaded_again(stack: Stack) -> None:
    async def scenario() -> None:
        store = _store(stack)
        client = store.client
        try:
            await client.script_flush()  # as after a restart or a failover to a fresh node
            assert await client.script_exists(store._commit.sha) == [False]
            batches = {p: PartitionCommit("", {}, {3600: {"all|contacts": p + 1}}, {}, [],
                                          {"wm": "7.5"}, [b"item"]) for p in range(6)}
            assert await store.commit(batches) == set()
            await store.finish_outbox({p: 1 for p in range(6)}, [("c1", 1, b'{"v":1}')])
            clocks = await store.read_clocks(6)
            assert {p: (c.seq, c.watermark) for p, c in clocks.items()} == {
                p: ("1", 7.5) for p in range(6)}
            assert await store.read_counters(6, [3600], ["all|contacts"]) == [21]
            assert await store.read_contact("c1") == b'{"v":1}'
            assert (await store.load({p: [] for p in range(6)}))[5].outbox == []
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_prefixed_counters_are_summed_inside_redis(stack: Stack) -> None:
    """sum_prefixed.lua: the agents table's read of counters whose names it does not know,
    summed over hours and partitions, only the dimensions and counters asked for, again after
    the server forgot the script."""
    async def scenario() -> None:
        store = _store(stack)
        client = store.client
        try:
            hour = {"agent:a|handled": 2, "agent:a|csat_sum": 9, "agent:b|handled": 1,
                    "agent:b|x|y|handled": 4, "queue:q|handled": 3, "channel:voice|handled": 3,
                    "agent_in_queue:1:qa|resolved": 1}
            batches = {p: PartitionCommit("", {}, {3600: hour, 7200: {"agent:a|handled": 1}},
                                          {}, [], {"wm": "7.5"}, []) for p in range(3)}
            assert await store.commit(batches) == set()
            await client.script_flush()
            got = await store.sum_prefixed(3, [3600, 7200, 10800], ["agent:", "agent_in_queue:"],
                                           ["handled", "resolved"])
            assert got == {"agent:a|handled": 9, "agent:b|handled": 3,
                           "agent:b|x|y|handled": 12, "agent_in_queue:1:qa|resolved": 3}
            assert await store.sum_prefixed(3, [10800], ["agent:"], ["handled"]) == {}
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_a_cluster_refuses_a_script_over_two_partitions(stack: Stack) -> None:
    async def scenario() -> None:
        store = _store(stack)
        if not isinstance(store.client, RedisCluster):
            await store.client.aclose()
            pytest.skip("one server: every key is on it")
        try:
            pipe = store.client.pipeline(transaction=False)
            await store._put_contact(keys=[store.key(0, "x"), store.key(1, "x")],
                                     args=[1, b"{}", 1000], client=pipe)
            with pytest.raises(RedisClusterException, match="same key slot"):
                await pipe.execute()
        finally:
            await store.client.aclose()

    asyncio.run(scenario())
