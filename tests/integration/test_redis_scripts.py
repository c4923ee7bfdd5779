"""The Lua scripts on the test stack's Redis, one server or (CX_TEST_REDIS_MODE=cluster) a
Redis Cluster: a server that forgot the scripts, and keys of two partitions in one script."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from service.adapters.erasure_store import ErasureStore
from service.adapters.http_value import read_page
from service.adapters.redis_state import RedisState, connect
from service.domain.partition import PartitionCommit
from service.domain.records import CustomerState
from service.domain.storage_names import (
    CLOCK_AT_RISK,
    CLOCK_AT_RISK_SEGMENT,
    CLOCK_VALUE_AT_RISK,
    customer_state,
)
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


def test_the_at_risk_work_list_is_written_read_by_page_and_left_on_erasure(
        stack: Stack) -> None:
    """The commit script writes and removes work-list entries with the value at risk; a
    page merges the partitions in each order; an erasure takes the customer out of both."""

    async def scenario() -> None:
        store = _store(stack)
        try:
            # (customer, partition, segment, value cents, score, since)
            rows = [("a", 0, "gold", 90000, 31.5, 300.0), ("b", 1, "gold", 12000, 20.0, 100.0),
                    ("c", 1, "none", 90000, 38.0, 200.0), ("d", 2, "standard", 500, 10.0, 400.0)]
            commits: dict[int, PartitionCommit] = {}
            for cid, p, segment, cents, score, since in rows:
                c = commits.setdefault(p, PartitionCommit("", {}, {}, {}, [], {}, []))
                c.states[customer_state(cid)] = CustomerState(
                    cid, alerted_at_risk=True, risk=(segment, cents))
                entry = orjson.dumps({"customer_id": cid, "segment": segment})
                c.risk_put[cid] = (entry, (-cents, score, since))
                c.increment(CLOCK_VALUE_AT_RISK + segment, cents)
                c.increment(CLOCK_AT_RISK_SEGMENT + segment, 1)
                c.increment(CLOCK_AT_RISK, 1)
            assert await store.commit(commits) == set()
            gate = asyncio.Semaphore(1)

            async def page(order: str, offset: int, limit: int, segment: str | None = None
                           ) -> list[str]:
                entries, _ = await read_page(store, 3, order, offset, limit, segment, gate)
                return [e["customer_id"] for e in entries]

            assert await page("value", 0, 10) == ["a", "c", "b", "d"]  # ties by customer_id
            assert await page("value", 1, 2) == ["c", "b"]
            assert await page("score", 0, 10) == ["d", "b", "a", "c"]
            assert await page("since", 0, 3) == ["b", "c", "a"]
            assert await page("value", 0, 10, "gold") == ["a", "b"]
            assert await page("score", 1, 10, "gold") == ["a"]
            # Leaving at-risk: removed in the next commit of its partition.
            clock = (await store.read_clocks(3))[1]
            leave = PartitionCommit(clock.seq, {}, {}, {}, [], {}, [], risk_remove=["c"])
            leave.increment(CLOCK_VALUE_AT_RISK + "none", -90000)
            assert await store.commit({1: leave}) == set()
            assert await page("value", 0, 10) == ["a", "b", "d"]
            # Erased: gone from the list, its value from the partition's value at risk.
            swept = await ErasureStore(store.client, store.prefix).sweep(store, 3, 1, ["a"], [])
            assert sum(s.states for s in swept) == 1
            assert await page("value", 0, 10) == ["b", "d"]
            clocks = await store.read_clocks(3)
            assert clocks[0].value_at_risk == {"gold": 0}
            assert clocks[0].at_risk_by_segment == {"gold": 0}
            assert clocks[0].at_risk == 0
            assert clocks[1].value_at_risk == {"gold": 12000, "none": 0}
            assert clocks[2].value_at_risk == {"standard": 500}
        finally:
            await store.client.aclose()

    asyncio.run(scenario())
