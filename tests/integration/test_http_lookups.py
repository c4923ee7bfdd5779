"""The lookups' gate on Redis reads, on the real aiohttp server and a real Redis."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import faust
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from service.adapters.http import install_routes
from service.adapters.http_security import HttpGuard
from service.adapters.redis_state import RedisState, connect
from service.config import load_settings
from service.domain.policy import Policy
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


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
