"""The worker's HTTP routes behind the security middleware, served by the real aiohttp server
Faust uses, and called over real HTTP on loopback (no Kafka needed: the routes under test
answer before they would read Redis, or read nothing)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import faust
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from service.adapters.http import install_routes
from service.adapters.http_security import HttpGuard
from service.adapters.redis_state import RedisState, connect
from service.config import ConfigError, load_settings
from service.domain.policy import Policy
from tests.support.browser import Browser, Page

TOKEN_A = "token-a-0123456789abcdef"
TOKEN_B = "token-b-0123456789abcdef"
# A valid token passes the guard and reaches the handler, which answers 400 to this query
# without touching Redis: 400 means "let through", 401 "refused".
FCR_BAD = "/api/v1/fcr?from=nope&to=nope"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Get = Callable[..., Awaitable[tuple[int, dict[str, str], bytes]]]


@asynccontextmanager
async def serve(clock: Clock | None = None, **env: str) -> AsyncIterator[Get]:
    async with serve_at(clock, **env) as (get, _):
        yield get


@asynccontextmanager
async def serve_at(clock: Clock | None = None, **env: str) -> AsyncIterator[tuple[Get, str]]:
    """The worker's routes behind the guard; a GET function and the base URL."""
    settings = load_settings(env)
    guard = HttpGuard(settings, clock or Clock())
    app = faust.App(f"http-test-{id(env)}", web_enabled=True,
                    web_application_options=guard.application_options())
    registry = CollectorRegistry()
    guard.register(registry)

    async def readiness() -> dict[str, bool]:
        return {"redis": True}

    state = RedisState(connect("redis://127.0.0.1:1/0"), "t", state_ttl=60, counter_ttl=60,
                       contact_ttl=60)
    install_routes(app, registry, readiness, state, Policy(), lambda: 6,
                   wallboard=lambda: {"watermark": "2026-11-24T10:00:00Z", "centre": {},
                                      "queues": [], "fcr_target": 0.7, "window": "1h"})
    server = TestServer(await app.web.wsgi(), host="127.0.0.1")
    await server.start_server()
    session = aiohttp.ClientSession()

    async def get(path: str, token: str | None = None, method: str = "GET",
                  **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with session.request(method, server.make_url(path), headers=headers,
                                   **kwargs) as response:
            return response.status, dict(response.headers), await response.read()

    try:
        yield get, str(server.make_url("")).rstrip("/")
    finally:
        await session.close()
        await server.close()
        await state.client.aclose()


def test_api_needs_one_of_the_tokens_compared_exactly() -> None:
    async def scenario() -> None:
        async with serve(CX_API_TOKENS=f"{TOKEN_A},{TOKEN_B}") as get:
            status, headers, _ = await get(FCR_BAD)
            assert status == 401
            assert headers["WWW-Authenticate"] == 'Bearer realm="cx-stream"'
            status, headers, _ = await get(FCR_BAD, TOKEN_A[:-1])
            assert status == 401
            assert 'error="invalid_token"' in headers["WWW-Authenticate"]
            assert (await get(FCR_BAD, TOKEN_A + "x"))[0] == 401
            assert (await get("/api/v1/customers/c-1", "Basic " + TOKEN_A))[0] == 401
            for token in (TOKEN_A, TOKEN_B):  # both, during a rotation
                status, headers, _ = await get(FCR_BAD, token)
                assert status == 400
                assert headers["Cache-Control"] == "no-store"

    asyncio.run(scenario())


def test_token_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# the routing system\n{TOKEN_A}\n")
    clock = Clock()

    async def scenario() -> None:
        async with serve(clock, CX_API_TOKENS_FILE=str(tokens)) as get:
            assert (await get(FCR_BAD, TOKEN_A))[0] == 400
            assert (await get(FCR_BAD, TOKEN_B))[0] == 401
            tokens.write_text(f"{TOKEN_B}  # rotated\n")
            clock.now += 2
            assert (await get(FCR_BAD, TOKEN_B))[0] == 400
            assert (await get(FCR_BAD, TOKEN_A))[0] == 401

    asyncio.run(scenario())


def test_without_tokens_the_api_is_open_on_loopback_only() -> None:
    async def scenario() -> None:
        async with serve() as get:  # CX_HTTP_HOST defaults to 127.0.0.1
            assert (await get(FCR_BAD))[0] == 400

    asyncio.run(scenario())
    with pytest.raises(ConfigError, match=r"^CX_API_AUTH: no API token"):
        HttpGuard(load_settings({"CX_HTTP_HOST": "0.0.0.0"}))
    with pytest.raises(ConfigError, match=r"^CX_API_AUTH: token needs"):
        load_settings({"CX_API_AUTH": "token"})
    assert not HttpGuard(load_settings({"CX_HTTP_HOST": "0.0.0.0", "CX_API_AUTH": "none"})
                         ).api_auth


def test_wallboard_open_by_default_or_behind_the_api_tokens() -> None:
    async def scenario() -> None:
        async with serve(CX_API_TOKENS=TOKEN_A) as get:
            assert (await get("/api/v1/wallboard"))[0] == 200
            assert (await get("/wallboard"))[0] == 200
        async with serve(CX_API_TOKENS=TOKEN_A, CX_WALLBOARD_PUBLIC="false") as get:
            assert (await get("/api/v1/wallboard"))[0] == 401
            assert (await get("/api/v1/wallboard", TOKEN_A))[0] == 200
            status, _, page = await get("/wallboard")  # the page holds no data
            assert status == 200
            assert b'src="/ui/static/common.js"' in page
            status, _, script = await get("/ui/static/common.js")  # which reads the token
            assert status == 200
            assert b"location.hash" in script

    asyncio.run(scenario())


def test_metrics_and_health_open_or_behind_their_own_tokens() -> None:
    async def scenario() -> None:
        async with serve(CX_API_TOKENS=TOKEN_A) as get:
            assert (await get("/metrics"))[0] == 200
            assert (await get("/healthz"))[0] == 200
            assert (await get("/readyz"))[0] == 200
        async with serve(CX_API_TOKENS=TOKEN_A, CX_METRICS_TOKEN=TOKEN_B,
                         CX_HEALTH_TOKEN="health-0123456789abc") as get:
            assert (await get("/metrics"))[0] == 401
            assert (await get("/metrics", TOKEN_A))[0] == 401  # an API token is not enough
            status, _, body = await get("/metrics", TOKEN_B)
            assert status == 200
            assert b'cx_http_rejected_total{reason="unauthorized"} 2.0' in body
            assert (await get("/healthz"))[0] == 401
            assert (await get("/readyz", "health-0123456789abc"))[0] == 200
            assert (await get(FCR_BAD, TOKEN_B))[0] == 401  # nor the metrics token the API

    asyncio.run(scenario())


def test_cors_only_for_the_configured_origins() -> None:
    allowed, other = "https://wallboard.example.com", "https://evil.example.net"
    preflight = {"Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}

    async def scenario() -> None:
        async with serve(CX_API_TOKENS=TOKEN_A, CX_CORS_ORIGINS=allowed) as get:
            status, headers, _ = await get(FCR_BAD, method="OPTIONS",
                                           headers={"Origin": allowed, **preflight})
            assert status == 204
            assert headers["Access-Control-Allow-Origin"] == allowed
            assert "Authorization" in headers["Access-Control-Allow-Headers"]
            status, headers, _ = await get(FCR_BAD, method="OPTIONS",
                                           headers={"Origin": other, **preflight})
            assert status == 403
            assert "Access-Control-Allow-Origin" not in headers
            status, headers, _ = await get(FCR_BAD, TOKEN_A, headers={"Origin": allowed})
            assert headers["Access-Control-Allow-Origin"] == allowed
            status, headers, _ = await get(FCR_BAD, TOKEN_A, headers={"Origin": other})
            assert status == 400
            assert "Access-Control-Allow-Origin" not in headers
        async with serve(CX_API_TOKENS=TOKEN_A) as get:  # no origins: no CORS at all
            status, headers, _ = await get(FCR_BAD, TOKEN_A, headers={"Origin": allowed})
            assert "Access-Control-Allow-Origin" not in headers

    asyncio.run(scenario())


def test_request_body_over_the_limit_is_refused() -> None:
    async def scenario() -> None:
        async with serve(CX_API_TOKENS=TOKEN_A, CX_HTTP_MAX_REQUEST_BYTES="100") as get:
            assert (await get(FCR_BAD, TOKEN_A, data=b"x" * 100))[0] == 400
            assert (await get(FCR_BAD, TOKEN_A, data=b"x" * 101))[0] == 413

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(5):
                    yield b"y" * 50

            assert (await get(FCR_BAD, TOKEN_A, data=chunks()))[0] == 413

    asyncio.run(scenario())


def test_rate_limit_per_client_answers_429_with_retry_after() -> None:
    clock = Clock()

    async def scenario() -> None:
        async with serve(clock, CX_API_TOKENS=f"{TOKEN_A},{TOKEN_B}", CX_API_RATE_LIMIT="0.5",
                         CX_API_RATE_BURST="2") as get:
            assert [(await get(FCR_BAD, TOKEN_A))[0] for _ in range(2)] == [400, 400]
            status, headers, _ = await get(FCR_BAD, TOKEN_A)
            assert status == 429
            assert headers["Retry-After"] == "2"  # one request per 2 s
            assert (await get(FCR_BAD, TOKEN_B))[0] == 400  # another client is not held back
            clock.now += 2
            assert (await get(FCR_BAD, TOKEN_A))[0] == 400
            assert (await get(FCR_BAD, TOKEN_A))[0] == 429
            assert (await get("/metrics"))[0] == 200  # scrapes are not rate limited

    asyncio.run(scenario())


def test_faust_builtin_pages_are_not_served() -> None:
    async def scenario() -> None:
        async with serve() as get:
            for path in ("/", "/router/", "/table/x/y/", "/graph/", "/stats/"):
                assert (await get(path))[0] == 404, path

    asyncio.run(scenario())


def test_private_wallboard_page_sends_the_token_from_its_fragment() -> None:
    """In a real browser: the page reads `#token=` and authenticates its data requests."""
    browser = Browser()

    async def status_line(get_base: str, fragment: str) -> str:
        async with aiohttp.ClientSession() as session:
            page = await Page.open(browser, session, "about:blank")
            await page.call("Page.navigate", url=f"{get_base}/wallboard{fragment}")
            deadline = time.monotonic() + 20
            text = ""
            while time.monotonic() < deadline:
                text = await page.evaluate(
                    "(document.getElementById('status') || {}).textContent || ''")
                if text.startswith(("event time", "not updating")):
                    break
                await asyncio.sleep(0.2)
            return str(text)

    async def scenario() -> tuple[str, str]:
        async with serve_at(CX_API_TOKENS=TOKEN_A, CX_WALLBOARD_PUBLIC="false") as (_, base):
            return (await status_line(base, f"#token={TOKEN_A}"),
                    await status_line(base, ""))

    try:
        with_token, without = asyncio.run(scenario())
    finally:
        browser.close()
    assert with_token.startswith("event time 2026-11-24T10:00:00Z"), with_token
    assert without == "not updating: HTTP 401 from /api/v1/wallboard"
