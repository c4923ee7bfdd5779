"""The lookups' gate on Redis reads, on the real aiohttp server and a real Redis."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import faust
import orjson
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from service.adapters.http import install_routes
from service.adapters.http_security import HttpGuard
from service.adapters.kafka_publish import partition_of
from service.adapters.redis_state import RedisState, connect
from service.config import load_settings
from service.domain.engine import fold, rfc3339, settle
from service.domain.partition import PartitionCommit
from service.domain.policy import Policy
from tests.support.stack import Stack
from tests.unit.builders import call, ts

pytestmark = pytest.mark.integration
POLICY = Policy()


def test_at_most_max_reads_lookups_read_redis_at_once(stack: Stack) -> None:
    async def scenario() -> None:
        settings = load_settings({"CX_API_RATE_LIMIT": "0"})
        guard = HttpGuard(settings)
        app = faust.App(f"lookup-test-{uuid.uuid4().hex[:8]}", web_enabled=True,
                        web_application_options=guard.application_options())
        registry = CollectorRegistry()
        guard.register(registry)
        state = RedisState(connect(stack.redis_url), f"t{uuid.uuid4().hex[:8]}", state_ttl=60,
                           counter_ttl=60, contact_ttl=60)
        inside = peak = served = arrived = 0
        customers = 8
        # Lookups that got the gate hold their read until every customer lookup has arrived
        # (a customer lookup names its partition before it queues for the gate): with a
        # working gate exactly max_reads are inside then, without one all of them would be.
        everyone_in = asyncio.Event()

        def arrive() -> int:
            nonlocal arrived
            arrived += 1
            if arrived == customers:
                everyone_in.set()
            return 6

        async def serving() -> tuple[RedisState, Policy]:
            nonlocal inside, peak, served
            inside += 1
            peak = max(peak, inside)
            await everyone_in.wait()
            inside -= 1
            served += 1
            return state, Policy()

        async def readiness() -> dict[str, bool]:
            return {"redis": True}

        install_routes(app, registry, readiness, state, Policy(), arrive,
                       wallboard=lambda: {}, serving=serving, max_reads=3)
        server = TestServer(await app.web.wsgi(), host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as session:
                async def get(path: str) -> tuple[int, bytes]:
                    async with session.get(server.make_url(path)) as response:
                        return response.status, await response.read()

                answers = await asyncio.gather(
                    *[get(f"/api/v1/customers/cust-{i}") for i in range(customers)],
                    *[get(f"/api/v1/contacts/contact-{i}") for i in range(4)])
        finally:
            await server.close()
            await state.client.aclose()
        # Nothing stored: every lookup read Redis and answered 404 with its own id.
        assert [status for status, _ in answers] == [404] * 12
        assert b"cust-7" in answers[7][1]
        assert b"contact-3" in answers[11][1]
        assert served == 12
        assert peak == 3  # never more than max_reads at once, and that many did overlap

    asyncio.run(scenario())


def test_a_lookup_reads_at_its_own_partitions_watermark_and_knows_idle_customers(
    stack: Stack
) -> None:
    """docs/perception.md rule 2 and docs/api.md: the score and the "resolved" signal go by the
    customer's partition watermark, not the service's (the slowest partition's); a customer
    whose records were all dropped is answered from their history, an unknown one with 404."""
    day = 86400.0
    t0 = ts(0)
    partitions = 6
    active = "cust-1"
    p_active = partition_of(active, partitions)
    idle = next(f"cust-{k}" for k in range(2, 99) if partition_of(f"cust-{k}", 6) != p_active)
    p_idle = partition_of(idle, partitions)
    behind = next(p for p in range(partitions) if p not in (p_active, p_idle))

    async def scenario() -> list[tuple[int, dict[str, Any]]]:
        settings = load_settings({"CX_API_RATE_LIMIT": "0"})
        guard = HttpGuard(settings)
        app = faust.App(f"lookup-test-{uuid.uuid4().hex[:8]}", web_enabled=True,
                        web_application_options=guard.application_options())
        registry = CollectorRegistry()
        guard.register(registry)
        store = RedisState(connect(stack.redis_url), f"t{uuid.uuid4().hex[:8]}",
                           state_ttl=60, counter_ttl=60, contact_ttl=60)
        one, _, _ = fold(None, call("a", 0, active, wait=30), t0, POLICY)
        two, _, _ = fold(None, call("b", 0, idle, wait=30), t0, POLICY)
        assert settle(two, t0 + 40 * day, POLICY).idle is True  # every record dropped
        commits = {
            p_active: PartitionCommit("", {f"c:{active}": one}, {}, {}, [], {
                "wm": repr(t0 + 14 * day)}, []),
            behind: PartitionCommit("", {}, {}, {}, [], {"wm": repr(t0 + day)}, []),
            p_idle: PartitionCommit("", {f"c:{idle}": two}, {}, {}, [], {
                "wm": repr(t0 + 40 * day)}, []),
        }
        assert await store.commit(commits) == set()

        async def readiness() -> dict[str, bool]:
            return {"redis": True}

        install_routes(app, registry, readiness, store, POLICY, lambda: partitions,
                       wallboard=lambda: {})
        server = TestServer(await app.web.wsgi(), host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as session:
                out = []
                for name in (active, idle, "cust-never"):
                    async with session.get(server.make_url(f"/api/v1/customers/{name}")) as r:
                        out.append((r.status, orjson.loads(await r.read())))
                return out
        finally:
            await server.close()
            await store.client.aclose()

    (status_a, a), (status_i, i), (status_n, n) = asyncio.run(scenario())
    assert status_a == 200
    # Read at its own partition's watermark (day 14), not the service's (day 1, partition
    # `behind`): the contact's window closed, and its "resolved" signal counts.
    assert a["watermark"] == rfc3339(t0 + 14 * day)
    assert a["recent_contacts"][0]["resolution"] == "resolved"
    # 70 -> 72.25 (the contact); drift 7 days; "resolved" at day 7; drift 7 more days.
    half = 0.5 ** 0.5
    at_day7 = 70 + (70 + 0.15 * (85 - 70) - 70) * half
    resolved = at_day7 + 0.2 * (90 - at_day7)
    assert a["perception"]["score"] == round(70 + (resolved - 70) * half, 2)
    assert a["detail"] == "recent"
    assert status_i == 200
    assert i["detail"] == "summary"
    assert i["recent_contacts"] == []
    assert i["open_contacts"] == 0
    assert i["history"]["first_contact_at"] == i["history"]["last_contact_at"] == rfc3339(t0)
    assert i["history"]["contacts"] == 1
    assert [c["contact_id"] for c in i["history"]["last_contacts"]] == ["b"]
    assert i["perception"]["at_risk"] is False
    assert status_n == 404
    assert n == {"error": "no customer 'cust-never'"}
