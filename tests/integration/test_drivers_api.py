"""/api/v1/repeat-drivers and /api/v1/cost on the real aiohttp server and a real Redis: hour
counters written into Redis are summed over the range, per driver, exactly."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import faust
import orjson
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from service.adapters.http import install_routes
from service.adapters.http_security import HttpGuard
from service.adapters.redis_state import RedisState, connect
from service.config import load_settings
from service.domain.policy import Policy
from tests.integration.test_hostile_requests import Server, time_text
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

COSTS = '{"currency": "EUR", "channel": {"voice": 5}}'
FIRST = 1777852800  # 2026-05-04T00:00:00Z
HOURS = [FIRST + 3600 * (5 * i + 1) for i in range(40)]  # every 5 hours, over 8 days
RANGE = f"from={time_text(HOURS[0])}&to={time_text(HOURS[29] + 3600)}"  # the first 30


@asynccontextmanager
async def serve(redis_url: str, **env: str) -> AsyncIterator[Server]:
    settings = load_settings({"CX_API_RATE_LIMIT": "0", **env})
    guard = HttpGuard(settings)
    app = faust.App(f"drivers-{uuid.uuid4().hex[:8]}", web_enabled=True,
                    web_application_options=guard.application_options())
    registry = CollectorRegistry()
    state = RedisState(connect(redis_url), f"t{uuid.uuid4().hex[:8]}", state_ttl=60,
                       counter_ttl=60, contact_ttl=60)

    async def readiness() -> dict[str, bool]:
        return {"redis": True}

    install_routes(app, registry, readiness, state, Policy(), lambda: 6, wallboard=dict,
                   max_reads=4, costs=settings.contact_costs, fcr_target=0.8)
    server = TestServer(await app.web.wsgi(), host="127.0.0.1")
    await server.start_server()
    try:
        assert server.port is not None
        yield Server(server.port, guard, [], state)
    finally:
        await server.close()
        await state.client.aclose()


# Per hour (spread over the 6 partitions): dimension -> counts.
PER_HOUR: dict[str, dict[str, int]] = {
    "all": {"fcr_total": 10, "unresolved": 4, "resolved": 5, "handled": 11, "cost": 55_000,
            "repeats": 2, "repeat_cost": 10_000, "settled_cost": 45_000},
    "reason:card": {"fcr_total": 6, "unresolved": 3, "resolved": 2, "led_cost": 10_000},
    "reason:loan": {"fcr_total": 4, "unresolved": 1, "resolved": 3, "led_cost": 0},
    "queue:q*1": {"fcr_total": 7, "unresolved": 3, "resolved": 3},
    "queue:q*10": {"fcr_total": 3, "unresolved": 1, "resolved": 2},
    # a queue `q*1` (glob character) and one whose name starts the same; a reason with `>`
    "queue_reason:q*1>card": {"fcr_total": 4, "unresolved": 2, "resolved": 1},
    "queue_reason:q*1>a%3Eb": {"fcr_total": 3, "unresolved": 1, "resolved": 2},
    "queue_reason:q*10>card": {"fcr_total": 2, "unresolved": 1, "resolved": 1},
    "queue_reason:qzz1>loan": {"fcr_total": 2, "unresolved": 1},  # `q*1` as a glob matches it
    "flow:q*1>q*10": {"fcr_total": 2, "unresolved": 2, "led_cost": 10_000},
    "flow:q*1>transfer": {"fcr_total": 1, "unresolved": 1},
    "flow:q*10>survey_unresolved": {"fcr_total": 1, "unresolved": 1},
}


async def _seed(server: Server) -> None:
    pipe = server.state.client.pipeline(transaction=False)
    for i, hour in enumerate(HOURS):
        pipe.hset(server.state.hour_key(i % 6, hour), mapping={
            f"{dimension}|{name}": n for dimension, counts in PER_HOUR.items()
            for name, n in counts.items()})
    await pipe.execute()


async def _json(server: Server, path: str) -> tuple[int, Any]:
    answer = await server.get(path)
    return answer.status, orjson.loads(answer.body)


def _rows(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(r["driver"], r["unresolved"], r["share"], r["cumulative_share"], r["fcr"],
             r["repeat_cost"], r["drivers"]) for r in body["rows"]]


def test_drivers_and_costs_over_a_range(stack: Stack) -> None:
    async def scenario() -> None:
        async with serve(stack.redis_url, CX_CONTACT_COSTS=COSTS) as server:
            await _seed(server)
            status, body = await _json(server, f"/api/v1/repeat-drivers?{RANGE}&by=reason")
            assert status == 200, body
            assert body["unresolved"] == 120
            assert body["currency"] == "EUR"
            assert _rows(body) == [("card", 90, 0.75, 0.75, 0.5, 300.0, 1),
                                   ("loan", 30, 0.25, 1.0, 0.75, 0.0, 1)]
            assert body["final"] is False
            assert body["watermark"] is None
            # One origin queue: its reasons only, the name with `>` given back as it is.
            status, body = await _json(
                server, f"/api/v1/repeat-drivers?{RANGE}&by=reason&queue=q*1")
            assert _rows(body) == [("card", 60, 0.666667, 0.666667, 0.5, 0.0, 1),
                                   ("a>b", 30, 0.333333, 1.0, round(2 / 3, 6), 0.0, 1)]
            status, body = await _json(server, f"/api/v1/repeat-drivers?{RANGE}&by=queue"
                                               "&queue=q*1")
            assert [r[:2] for r in _rows(body)] == [("q*1", 90)]
            # Flows: each with its origin queue's FCR; past the limit, summed into `other`.
            status, body = await _json(
                server, f"/api/v1/repeat-drivers?{RANGE}&by=origin_queue%3Erepeat_queue"
                        "&limit=1")
            assert _rows(body) == [("q*1>q*10", 60, 0.5, 0.5, round(1 - 3 / 7, 6), 300.0, 1),
                                   ("other", 60, 0.5, 1.0, None, 0.0, 2)]
            assert (body["rows"][0]["origin_queue"], body["rows"][0]["repeat_queue"]) == (
                "q*1", "q*10")
            status, body = await _json(server, f"/api/v1/cost?{RANGE}")
            assert status == 200, body
            assert body | {"watermark": None} == {
                "from": time_text(HOURS[0]).replace("Z", ".000Z"),
                "to": time_text(HOURS[29] + 3600).replace("Z", ".000Z"),
                "dimension": "all", "currency": "EUR", "handled": 330,
                "contact_cost": 1650.0, "repeats": 60, "repeat_cost": 300.0,
                "resolved": 150, "unresolved": 120, "settled_cost": 1350.0,
                "cost_per_resolution": 9.0, "fcr_target": 0.8,
                # 1350 * (1 - (150 / 270) / 0.8) = 412.5
                "avoidable_cost": 412.5, "final": False, "watermark": None,
                "policy_version": "1"}
            status, body = await _json(server, f"/api/v1/repeat-drivers?{RANGE}&by=channel")
            assert status == 400
            assert "'by' must be one of" in body["error"]
            # A Redis that lost its scripts (a restart) gets the script again.
            await server.state.client.script_flush()
            status, body = await _json(server, f"/api/v1/repeat-drivers?{RANGE}&by=reason")
            assert body["unresolved"] == 120

    asyncio.run(scenario())


def test_without_costs_no_cost_figures(stack: Stack) -> None:
    async def scenario() -> None:
        async with serve(stack.redis_url) as server:
            await _seed(server)
            status, body = await _json(server, f"/api/v1/cost?{RANGE}")
            assert status == 404
            assert "CX_CONTACT_COSTS" in body["error"]
            status, body = await _json(server, f"/api/v1/repeat-drivers?{RANGE}&by=reason")
            assert body["currency"] is None
            assert [r["repeat_cost"] for r in body["rows"]] == [None, None]

    asyncio.run(scenario())
