"""Policy versions in a real Redis: recorded rules, the served-version pointer, dropping."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest

from service.adapters.policy_versions import PolicyMismatch, PolicyVersions
from service.adapters.redis_state import RedisState, connect
from service.domain.policy import Policy, QueuePolicy
from tests.support.stack import Stack

pytestmark = pytest.mark.integration
WEEK = Policy(default=QueuePolicy(repeat_window=7 * 86400.0), version="1")
THREE_DAYS = Policy(default=QueuePolicy(repeat_window=3 * 86400.0), version="2")


def _versions(stack: Stack, own: Policy, prefix: str) -> PolicyVersions:
    client = connect(stack.redis_url)
    return PolicyVersions(client, prefix, own, lambda p: RedisState(
        client, p, state_ttl=60, counter_ttl=60, contact_ttl=60))


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
