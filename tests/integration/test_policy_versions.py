"""Policy versions in a real Redis: recorded rules, the served-version pointer, dropping."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import pytest

from service.adapters.policy_versions import PolicyMismatch, PolicyVersions
from service.adapters.redis_state import RedisState, connect
from service.domain.policy import Policy, QueuePolicy
from tests.support.stack import Stack

pytestmark = pytest.mark.integration
WEEK = Policy(default=QueuePolicy(repeat_window=7 * 86400.0), version="1")
THREE_DAYS = Policy(default=QueuePolicy(repeat_window=3 * 86400.0), version="2")


def _versions(stack: Stack, own: Policy, prefix: str, **cache: Any) -> PolicyVersions:
    client = connect(stack.redis_url)
    return PolicyVersions(client, prefix, own, lambda p: RedisState(
        client, p, state_ttl=60, counter_ttl=60, contact_ttl=60), **cache)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_reader_keeps_the_version_it_read_for_its_cache_time_then_switches(
    stack: Stack
) -> None:
    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        writer = _versions(stack, THREE_DAYS, prefix)
        clock = Clock()
        reader = _versions(stack, WEEK, prefix, cache_seconds=1.0, clock=clock)
        uncached = _versions(stack, WEEK, prefix)
        try:
            await writer.claim(THREE_DAYS)
            await writer.activate_if_unset("1")
            assert (await reader.serving()).version == "1"
            assert await writer.switch("1", "2") == "2"  # what `cx-stream rebuild` does
            assert (await uncached.serving()).version == "2"  # no cache: at once
            clock.now += 0.5
            assert (await reader.serving()).version == "1"  # read 0.5 s ago: kept
            clock.now += 0.499
            assert (await reader.serving()).version == "1"
            clock.now += 0.001  # 1 s after the read: read again
            served = await reader.serving()
            assert (served.version, served.policy) == ("2", THREE_DAYS)
            # Redis is not asked again while the new answer is fresh: a pointer set back
            # behind the reader's back shows only after the cache time.
            await writer.client.set(writer.pointer_key, "1")
            clock.now += 0.9
            assert (await reader.serving()).version == "2"
            clock.now += 0.1
            assert (await reader.serving()).version == "1"
        finally:
            for versions in (writer, reader, uncached):
                await versions.client.aclose()

    asyncio.run(scenario())


def test_a_slow_older_read_does_not_replace_a_newer_one(stack: Stack) -> None:
    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        writer = _versions(stack, THREE_DAYS, prefix)
        clock = Clock()
        reader = _versions(stack, WEEK, prefix, cache_seconds=1.0, clock=clock)
        try:
            await writer.claim(THREE_DAYS)
            await writer.activate_if_unset("1")
            # Two requests find the cache empty; the first one's read is slow and only
            # answers after the switch and the second one's read.
            first_read = asyncio.Event()
            newer_read = asyncio.Event()
            original = reader.active

            async def slow_active() -> str | None:
                version = await original()
                first_read.set()
                await newer_read.wait()  # answers only after the second request's read
                return version

            reader.active = slow_active  # type: ignore[method-assign]
            slow = asyncio.ensure_future(reader.serving())
            await first_read.wait()  # the slow request read version 1 at time 1000
            reader.active = original  # type: ignore[method-assign]
            assert await writer.switch("1", "2") == "2"
            clock.now += 0.1
            assert (await reader.serving()).version == "2"  # read at 1000.1
            newer_read.set()
            assert (await slow).version == "1"  # the slow request answers with its read
            clock.now += 0.5
            assert (await reader.serving()).version == "2"  # the newer read stays
        finally:
            for versions in (writer, reader):
                await versions.client.aclose()

    asyncio.run(scenario())


def test_a_version_keeps_the_rules_it_was_first_run_with(stack: Stack) -> None:
    async def scenario() -> None:
        versions = _versions(stack, THREE_DAYS, f"t{uuid.uuid4().hex[:8]}")
        try:
            await versions.claim(THREE_DAYS)
            await versions.claim(THREE_DAYS)  # the same rules again: fine
            wider = dataclasses.replace(THREE_DAYS, default=QueuePolicy(repeat_window=86400.0))
            with pytest.raises(PolicyMismatch, match=r"default\.repeat_window: 259200\.0 -> "
                                                     r"86400\.0"):
                await versions.claim(wider)
            # a reader of another version serves version 2 with version 2's recorded rules
            reader = _versions(stack, WEEK, versions.key_prefix)
            assert (await reader.serving()).version == "1"  # nothing made active yet
            assert await versions.switch(None, "2") == "2"
            served = await reader.serving()
            assert served.version == "2"
            assert served.policy == THREE_DAYS
            assert served.state.prefix == f"{versions.key_prefix}:v2"
            await reader.client.aclose()
        finally:
            await versions.client.aclose()

    asyncio.run(scenario())


def test_switch_only_from_the_version_the_caller_saw(stack: Stack) -> None:
    async def scenario() -> None:
        versions = _versions(stack, WEEK, f"t{uuid.uuid4().hex[:8]}")
        try:
            await versions.activate_if_unset("1")
            await versions.activate_if_unset("5")  # set already: unchanged
            assert await versions.active() == "1"
            assert await versions.switch("3", "4") == "1"  # someone else's view: refused
            assert await versions.active() == "1"
            assert await versions.switch("1", "2") == "2"
            assert await versions.active() == "2"
        finally:
            await versions.client.aclose()

    asyncio.run(scenario())


def test_dropping_a_version_leaves_the_others_and_the_pointer(stack: Stack) -> None:
    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        versions = _versions(stack, WEEK, prefix)
        client = versions.client
        try:
            await versions.claim(WEEK)
            await versions.claim(THREE_DAYS)
            await versions.switch(None, "2")
            for p in (f"{prefix}", f"{prefix}:v2"):
                await client.hset(f"{p}:{{p0}}:clock", "seq", "1")
                await client.set(f"{p}:{{p3}}:s:c:cust-1", "{}")
                await client.hset(f"{p}:contact:k-1", "j", "{}")
            assert await versions.drop("1") == 4  # clock, state, contact view, rules
            left = sorted([k.decode() async for k in client.scan_iter(match=f"{prefix}*")])
            assert left == sorted([
                f"{prefix}:active-policy", f"{prefix}:policy:v2", f"{prefix}:v2:{{p0}}:clock",
                f"{prefix}:v2:{{p3}}:s:c:cust-1", f"{prefix}:v2:contact:k-1"])
        finally:
            await client.aclose()

    asyncio.run(scenario())
