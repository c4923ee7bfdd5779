from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.crc import key_slot

from service.adapters.redis_state import RedisState, connect
from service.domain.engine import apply_event, new_state
from service.domain.partition import PartitionCommit
from tests.support.stack import Stack
from tests.unit.builders import call

pytestmark = pytest.mark.integration


def _store(stack: Stack) -> RedisState:
    return RedisState(connect(stack.redis_url), f"t{uuid.uuid4().hex[:8]}", state_ttl=3600,
                      counter_ttl=3600, contact_ttl=3600)


def test_commit_writes_everything_and_guards_against_a_second_writer(stack: Stack) -> None:
    async def scenario() -> None:
        store = _store(stack)
        state = new_state(call("a", 0))
        apply_event(state, call("a", 0))
        commit = PartitionCommit(
            seq="", states={"c:cust-1": state}, counters={3600: {"all|contacts": 2}},
            timers_add={"c:cust-1": 99.5}, timers_remove=[], clock_fields={"wm": "12.5"},
            outbox=[b'["contact","a",1]\n{}'],
        )
        assert await store.commit({4: commit}) == set()
        data = (await store.load({4: ["c:cust-1", "c:nobody"]}))[4]
        assert data.clock.seq == "1"
        assert data.clock.watermark == 12.5
        assert data.due == [("c:cust-1", 99.5)]
        assert data.outbox == [b'["contact","a",1]\n{}']
        loaded = data.state("c:cust-1")
        assert loaded is not None
        assert loaded.to_dict() == state.to_dict()
        assert data.states["c:nobody"] is None
        assert await store.read_counters(6, [3600], ["all|contacts"]) == [2]
        # A writer that read before this commit (seq "") must be refused.
        stale = PartitionCommit("", {}, {3600: {"all|contacts": 5}}, {}, [], {}, [])
        assert await store.commit({4: stale}) == {4}
        assert await store.read_counters(6, [3600], ["all|contacts"]) == [2]
        # Deleting a state and trimming the outbox.
        gone = PartitionCommit("1", {"c:cust-1": None}, {}, {}, ["c:cust-1"], {}, [])
        assert await store.commit({4: gone}) == set()
        await store.finish_outbox({4: 1}, [("a", 2, b'{"v":2}'), ("b", 1, b'{"v":1}')])
        await store.finish_outbox({}, [("a", 1, b'{"v":1}')])  # an older version loses
        data = (await store.load({4: ["c:cust-1"]}))[4]
        assert data.state("c:cust-1") is None
        assert data.due == []
        assert data.outbox == []
        assert await store.read_contact("a") == b'{"v":2}'
        await store.client.aclose()

    asyncio.run(scenario())


def test_counters_and_timers_add_up_over_commits_of_any_size(stack: Stack) -> None:
    """The commit script adds each hour key's deltas to what is stored in one read and one
    write per thousand fields: new fields, existing ones, retractions to zero and below, and
    more fields and timers than one call takes."""
    async def scenario() -> None:
        store = _store(stack)
        fields = [f"queue:q{i}|contacts" for i in range(2_500)]
        first = PartitionCommit(
            seq="", states={}, counters={3600: {f: i for i, f in enumerate(fields)},
                                         7200: {"all|contacts": 3}},
            timers_add={f"c:{i}": float(i) for i in range(1_200)}, timers_remove=[],
            clock_fields={}, outbox=[])
        assert await store.commit({2: first}) == set()
        second = PartitionCommit(
            seq="1", states={}, counters={3600: {fields[0]: 5, fields[1]: -1, fields[2]: -7,
                                                 "all|new": 1},
                                          7200: {"all|contacts": -3}},
            timers_add={"c:0": float("-inf"), "c:new": 2.5}, timers_remove=["c:1"],
            clock_fields={}, outbox=[])
        assert await store.commit({2: second}) == set()
        stored = await store.client.hgetall(store.hour_key(2, 3600))
        expected = {f: i for i, f in enumerate(fields)}
        expected.update({fields[0]: 5, fields[1]: 0, fields[2]: -5, "all|new": 1})
        assert {k.decode(): int(v) for k, v in stored.items()} == expected
        assert await store.read_counters(2, [7200], ["all|contacts"]) == [0]
        assert 0 < await store.client.pttl(store.hour_key(2, 3600)) <= 3_600_000
        timers = await store.client.zrange(store.key(2, "timers"), 0, -1, withscores=True)
        assert len(timers) == 1_200  # 1,200 added, one removed, one new
        assert timers[0] == (b"c:0", float("-inf"))
        assert (b"c:new", 2.5) in timers
        assert b"c:1" not in dict(timers)
        await store.client.aclose()

    asyncio.run(scenario())


def test_one_partition_keys_share_a_cluster_slot() -> None:
    store = RedisState.__new__(RedisState)
    store.prefix = "cx"
    keys = [store.key(4, "clock"), store.key(4, "timers"), store.key(4, "outbox"),
            store.state_key(4, "c:someone"), store.hour_key(4, 1_700_000_000)]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert key_slot(store.key(5, "clock").encode()) != key_slot(keys[0].encode())


def test_writes_go_on_after_redis_lost_its_scripts(stack: Stack) -> None:
    async def scenario() -> None:
        store = _store(stack)
        first = PartitionCommit("", {}, {3600: {"all|contacts": 1}}, {}, [], {}, [b"x"])
        assert await store.commit({2: first}) == set()
        await store.client.script_flush()  # as after a restart of Redis
        second = PartitionCommit("1", {}, {3600: {"all|contacts": 1}}, {}, [], {},
                                 [b"y", b"z"])
        assert await store.commit({2: second}) == set()
        assert await store.read_counters(6, [3600], ["all|contacts"]) == [2]  # applied once
        await store.client.script_flush()
        await store.finish_outbox({2: 2}, [("c", 3, b'{"v":3}')])
        assert await store.read_contact("c") == b'{"v":3}'
        assert (await store.load({2: []}))[2].outbox == [b"z"]  # trimmed once, not twice
        await store.client.aclose()

    asyncio.run(scenario())
