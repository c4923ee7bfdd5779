"""What the API's security middleware costs: requests per second through the worker's routes,
served by Faust's aiohttp server on loopback, with and without the guard.

    .venv/bin/python -m bench.http_security [REQUESTS]

Client and server share one process and one core, so the absolute figures are lower than a
real worker's; the difference between the rows is the guard's cost. The requests are
`/api/v1/fcr` with a bad query (answered 400 before any Redis read) so that only HTTP and the
guard are measured.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

import aiohttp
import faust
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from service.adapters.http import install_routes
from service.adapters.http_security import HttpGuard
from service.adapters.redis_state import RedisState, connect
from service.config import load_settings
from service.domain.policy import Policy

TOKENS = [f"bench-token-{i:04d}-0123456789" for i in range(3)]


async def _run(options: dict[str, Any], requests: int, token: str | None) -> tuple[float, float]:
    app = faust.App(f"bench-{id(options)}", web_enabled=True, web_application_options=options)

    async def readiness() -> dict[str, bool]:
        return {}

    state = RedisState(connect("redis://127.0.0.1:1/0"), "b", state_ttl=1, counter_ttl=1,
                       contact_ttl=1)
    install_routes(app, CollectorRegistry(), readiness, state, Policy(), lambda: 6,
                   wallboard=dict)
    server = TestServer(await app.web.wsgi(), host="127.0.0.1")
    await server.start_server()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = server.make_url("/api/v1/fcr?from=x&to=y")
    latencies = []
    try:
        async with aiohttp.ClientSession(headers=headers) as session:
            for _ in range(200):  # warm up
                async with session.get(url) as response:
                    await response.read()
            started = time.perf_counter()
            for _ in range(requests):
                t = time.perf_counter()
                async with session.get(url) as response:
                    await response.read()
                    assert response.status == 400, response.status
                latencies.append(time.perf_counter() - t)
            elapsed = time.perf_counter() - started
    finally:
        await server.close()
        await state.client.aclose()
    return requests / elapsed, statistics.median(latencies) * 1e6


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    plain = {}
    guarded = HttpGuard(load_settings({"CX_API_TOKENS": ",".join(TOKENS),
                                       "CX_API_RATE_LIMIT": "0",
                                       "CX_CORS_ORIGINS": "https://wallboard.example.com"}))
    limited = HttpGuard(load_settings({"CX_API_TOKENS": ",".join(TOKENS),
                                       "CX_API_RATE_LIMIT": "1000000",
                                       "CX_API_RATE_BURST": "1000000"}))
    print(f"{requests} sequential GETs, keep-alive; median of 3 runs")
    print(f"{'configuration':44} {'req/s':>8} {'p50 us':>8}")
    for name, options, token in (
        ("no guard (routes only)", plain, None),
        ("guard, 3 tokens (the last one sent)", guarded.application_options(), TOKENS[-1]),
        ("guard, 3 tokens + rate limit", limited.application_options(), TOKENS[-1]),
    ):
        runs = [asyncio.run(_run(options, requests, token)) for _ in range(3)]
        rate = statistics.median(r[0] for r in runs)
        p50 = statistics.median(r[1] for r in runs)
        print(f"{name:44} {rate:8.0f} {p50:8.0f}")


if __name__ == "__main__":
    main()
