"""The read side under hostile requests: the worker's routes behind the security middleware, on
the real aiohttp server Faust uses and a real Redis, called with raw HTTP on loopback.

Every request class gets a 4xx with a JSON reason, never a 5xx; the open API answers only the
configured host names (DNS rebinding); token files fail closed; the FCR endpoint's cost is
bounded."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import faust
import orjson
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from service.adapters.http import install_routes
from service.adapters.http_security import HttpGuard
from service.adapters.redis_state import RedisState, connect
from service.config import ConfigError, load_settings
from service.domain.policy import Policy
from tests.support.browser import Browser, Page
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

TOKEN = "token-hostile-0123456789"
HOUR_RANGE = "from=2026-05-04T10:00:00Z&to=2026-05-04T12:00:00Z"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> str:
        """The JSON reason of a refusal."""
        assert self.headers.get("content-type", "").startswith("application/json"), self
        reason = orjson.loads(self.body)["error"]
        assert isinstance(reason, str)
        assert reason
        return reason


class Server:
    def __init__(self, port: int, guard: HttpGuard, served: list[int],
                 state: RedisState) -> None:
        self.port = port
        self.guard = guard
        self.state = state
        self.served = served  # policy lookups made: requests that reached Redis
        self.hold: asyncio.Event | None = None  # when set, requests wait for it to be set

    async def raw(self, target: str | bytes, headers: dict[str, str] | None = None,
                  method: str = "GET", host: str | None = "127.0.0.1") -> Answer:
        """One request with exactly this request target and these headers (Host unless None)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        lines = [method.encode() + b" " + (target if isinstance(target, bytes)
                                            else target.encode()) + b" HTTP/1.1"]
        if host is not None:
            lines.append(f"Host: {host}".encode())
        lines += [f"{k}: {v}".encode() for k, v in (headers or {}).items()]
        lines.append(b"Connection: close")
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        await writer.drain()
        data = await reader.read()
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parsed = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            parsed[name.strip().lower()] = value.strip()
        return Answer(int(status_line.split()[1]), parsed, body)

    async def get(self, target: str, **kwargs: Any) -> Answer:
        return await self.raw(target, **kwargs)


@asynccontextmanager
async def serve(redis_url: str, **env: str) -> AsyncIterator[Server]:
    settings = load_settings({"CX_API_RATE_LIMIT": "0", **env})
    guard = HttpGuard(settings)
    app = faust.App(f"hostile-{uuid.uuid4().hex[:8]}", web_enabled=True,
                    web_application_options=guard.application_options())
    registry = CollectorRegistry()
    guard.register(registry)
    state = RedisState(connect(redis_url), f"t{uuid.uuid4().hex[:8]}", state_ttl=60,
                       counter_ttl=60, contact_ttl=60)
    served: list[int] = []
    holder: list[Server] = []

    async def serving() -> tuple[RedisState, Policy]:
        served.append(1)
        hold = holder[0].hold
        if hold is not None:
            await hold.wait()
        return state, Policy()

    async def readiness() -> dict[str, bool]:
        return {"redis": True, **guard.readiness()}

    install_routes(app, registry, readiness, state, Policy(), lambda: 6, wallboard=dict,
                   serving=serving, max_reads=4, max_fcr=settings.api_max_fcr)
    server = TestServer(await app.web.wsgi(), host="127.0.0.1")
    await server.start_server()
    try:
        assert server.port is not None
        holder.append(Server(server.port, guard, served, state))
        yield holder[0]
    finally:
        await server.close()
        await state.client.aclose()


FCR_BAD_QUERIES = [
    # The two queries of the report that were answered 500.
    ("from=0001-01-01T00:00:00%2B01:00&to=0001-01-01T01:00:00%2B01:00", "from 1970"),
    ("from=9999-12-31T23:00:00-01:00&to=9999-12-31T23:00:00-02:00", "from 1970"),
    ("from=1969-12-31T00:00:00Z&to=1970-01-01T01:00:00Z", "from 1970"),
    ("from=NaN&to=NaN", "not an RFC 3339"),
    ("from=1e308&to=2e308", "not an RFC 3339"),
    ("from=-99999999999999999999&to=99999999999999999999", "not an RFC 3339"),
    ("from=99999-01-01T00:00:00Z&to=99999-01-01T01:00:00Z", "not an RFC 3339"),
    ("from=&to=", "'from' is required"),
    ("", "'from' is required"),
    ("from", "'from' is required"),
    (f"{HOUR_RANGE}&from=2026-05-04T11:00:00Z", "more than once: from"),
    (f"{HOUR_RANGE}&queue=a&queue=b", "more than once: queue"),
    (f"{HOUR_RANGE}&queue=", "'queue' must be 1 to 128 characters, got 0"),
    (f"{HOUR_RANGE}&agent={'a' * 129}", "'agent' must be 1 to 128 characters"),
    (f"from={'9' * 6000}&to=1", "not an RFC 3339"),
    (f"{HOUR_RANGE}&{'x' * 3000}=1", "unknown parameter"),
    (f"{HOUR_RANGE}&queue=%FF%FE", "not valid UTF-8"),
    ("from=%C3&to=%C3", "not valid UTF-8"),
    (f"{HOUR_RANGE}&queue=100%", "two hex digits"),
    (f"{HOUR_RANGE}&queue=%G1", "two hex digits"),
    ("&".join(f"p{i}=1" for i in range(40)), "too many query parameters"),
    (f"{HOUR_RANGE}&channel=voice&segment=gold", "at most one of"),
    ("from=2026-05-04T12:00:00Z&to=2026-05-04T10:00:00Z", "'to' must be after 'from'"),
    ("from=2026-05-04T10:00:00Z&to=2026-05-04T10:00:00Z", "'to' must be after 'from'"),
    ("from=2026-05-04T10:30:00Z&to=2026-05-04T12:00:00Z", "on the hour"),
    ("from=2026-05-04T10:00:00.5Z&to=2026-05-04T12:00:00Z", "on the hour"),
    ("from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "at most 9600 hours"),
    ("from=2026-02-30T00:00:00Z&to=2026-03-01T00:00:00Z", "not an RFC 3339"),
    ("from=2026-05-04T10:00:00%2B24:00&to=2026-05-04T12:00:00Z", "not an RFC 3339"),
    ("from=2026-05-04%2010:00:00Z&to=2026-05-04T12:00:00Z", "not an RFC 3339"),
    ("from=%002026-05-04T10:00:00Z&to=2026-05-04T12:00:00Z", "not an RFC 3339"),
]


def test_every_bad_fcr_query_gets_a_400_with_its_reason(stack: Stack) -> None:
    async def scenario() -> None:
        async with serve(stack.redis_url) as server:
            for query, reason in FCR_BAD_QUERIES:
                answer = await server.get(f"/api/v1/fcr?{query}")
                assert answer.status == 400, (query[:80], answer)
                assert reason in answer.error(), (query[:80], answer.error())
            assert server.served == []  # none of them read Redis
            # The edges that are valid are answered.
            for query in (HOUR_RANGE, "from=9999-12-31T22:00:00Z&to=9999-12-31T23:00:00Z",
                          "from=1970-01-01T00:00:00Z&to=1970-01-01T01:00:00Z",
                          "from=2026-05-04T11:00:00%2B01:00&to=2026-05-04T12:00:00Z",
                          f"{HOUR_RANGE}&queue={'%F0%9F%98%80' * 128}",
                          f"{HOUR_RANGE}&segment=%7Bgold%7D%20%2F%25"):
                answer = await server.get(f"/api/v1/fcr?{query}")
                assert answer.status == 200, (query[:80], answer)
                assert orjson.loads(answer.body)["total"] == 0

    asyncio.run(scenario())


# Every whole-number parameter, with values that are not whole numbers in its range: a
# superscript digit (`str.isdigit()` is true, `int()` fails), a sign, an exponent, too large.
NUMBER_PARAMETERS = [
    "/api/v1/queues/sales/contacts?limit={}", f"/api/v1/topics?{HOUR_RANGE}&limit={{}}",
    f"/api/v1/repeat-drivers?{HOUR_RANGE}&by=reason&limit={{}}",
    "/api/v1/customers/at-risk?limit={}", "/api/v1/customers/at-risk?offset={}",
    "/api/v1/fcr/hourly?hours={}",
]


def test_every_whole_number_parameter_refuses_what_is_not_one(stack: Stack) -> None:
    async def scenario() -> None:
        async with serve(stack.redis_url) as server:
            for template in NUMBER_PARAMETERS:
                for value in ("%C2%B2", "-1", "1e3", "99999999999999999999", "", "%EF%BC%91"):
                    answer = await server.get(template.format(value))
                    assert answer.status == 400, (template, value, answer)

    asyncio.run(scenario())


LOOKUP_BAD_IDS = [
    ("%FF", "not valid UTF-8"),
    ("ab%C3", "not valid UTF-8"),
    ("%ED%A0%80", "not valid UTF-8"),  # a UTF-16 surrogate, not a character
    ("a%", "two hex digits"),
    ("%2", "two hex digits"),
    ("x" * 129, "ids are 1 to 128 characters, got 129"),
    ("%F0%9F%98%80" * 129, "ids are 1 to 128 characters, got 129"),
]


def test_bad_ids_get_a_400_and_unknown_ones_a_404_with_a_reason(stack: Stack) -> None:
    async def scenario() -> None:
        async with serve(stack.redis_url) as server:
            for kind in ("customers", "contacts"):
                server.served.clear()
                for raw, reason in LOOKUP_BAD_IDS:
                    answer = await server.get(f"/api/v1/{kind}/{raw}")
                    assert answer.status == 400, (kind, raw[:40], answer)
                    assert reason in answer.error()
                assert server.served == []
                answer = await server.get(f"/api/v1/%{ord(kind[0]):02X}{kind[1:]}/a%2Fb")
                assert answer.status == 404
                assert answer.error() == "no " + kind[:-1] + " 'a/b'"
                for raw, shown in (("nobody", "'nobody'"), ("a%2Fb", "'a/b'"),
                                   ("%2E%2E", "'..'"), ("%7B%7D", "'{}'"),
                                   ("%F0%9F%98%80" * 128, "'" + "\U0001F600" * 128 + "'")):
                    answer = await server.get(f"/api/v1/{kind}/{raw}")
                    assert answer.status == 404, (kind, raw, answer)
                    assert shown in answer.error()
                # No id, or an unencoded '/': no such route, a JSON 404.
                for target in (f"/api/v1/{kind}/", f"/api/v1/{kind}", f"/api/v1/{kind}/a/b"):
                    answer = await server.get(target)
                    assert (answer.status, answer.error()) == (404, "not found"), target

    asyncio.run(scenario())


def test_odd_requests_get_a_4xx_never_a_5xx(stack: Stack) -> None:
    async def scenario() -> None:
        async with serve(stack.redis_url) as server:
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                for path in ("/api/v1/fcr", "/api/v1/customers/c-1", "/api/v1/contacts/c-1"):
                    answer = await server.get(path, method=method)
                    assert answer.status == 405, (method, path, answer)
                    assert "not allowed" in answer.error()
                    assert "GET" in answer.headers["allow"]
            for path in ("/api/v2/customers/x", "/api/v1/nope", "/api//v1/fcr", "/%FF",
                         "/api/v1/customers%2Fx"):
                answer = await server.get(path)
                assert answer.status == 404, (path, answer)
                assert answer.error() == "not found"
            # What the HTTP parser refuses before any route: 4xx from the server itself.
            too_long = await server.get("/api/v1/fcr?" + "q=" + "x" * 9000)
            assert 400 <= too_long.status < 500
            big_header = await server.get("/api/v1/fcr", headers={"X-Big": "y" * 9000})
            assert 400 <= big_header.status < 500
            raw_utf8 = await server.raw("/api/v1/customers/é".encode())
            assert 400 <= raw_utf8.status < 500
            control = await server.raw(b"/api/v1/customers/a\x01b")
            assert 400 <= control.status < 500
            assert server.served == []

    asyncio.run(scenario())


def test_redis_out_of_reach_is_a_503_with_a_reason() -> None:
    async def scenario() -> None:
        async with serve("redis://127.0.0.1:1/0") as server:
            for path in ("/api/v1/customers/c-1", "/api/v1/contacts/c-1",
                         f"/api/v1/fcr?{HOUR_RANGE}"):
                answer = await server.get(path)
                assert answer.status == 503, (path, answer)
                assert "storage" in answer.error()
                assert answer.headers["retry-after"] == "1"

    asyncio.run(scenario())


# --- DNS rebinding -------------------------------------------------------------------------

PERSONAL = ("/api/v1/customers/c-1", "/api/v1/contacts/c-1", f"/api/v1/fcr?{HOUR_RANGE}")


def test_open_api_answers_only_the_allowed_host_names(stack: Stack) -> None:
    async def scenario() -> None:
        async with serve(stack.redis_url) as server:  # no token, loopback: open
            assert not server.guard.api_auth
            for host in ("127.0.0.1", "127.0.0.1:6066", "localhost", "LOCALHOST.:80",
                         "[::1]", "[::1]:6066"):
                for path in PERSONAL:
                    answer = await server.get(path, host=host)
                    assert answer.status in (200, 404), (host, path, answer)
            for host in ("rebind.attacker.example", "rebind.attacker.example:6066",
                         "127.0.0.1.nip.io", "localhost.attacker.example", "", "[::2]",
                         "127.0.0.2", "localhost:x", "local host"):
                for path in PERSONAL:
                    answer = await server.get(path, host=host)
                    assert answer.status == 403, (host, path, answer)
                    assert "CX_API_ALLOWED_HOSTS" in answer.error()
            for path in PERSONAL:  # no Host header at all (HTTP/1.1 requires one)
                answer = await server.get(path, host=None)
                assert answer.status in (400, 403), answer
            # Aggregates stay open to any host, as /metrics is.
            for path in ("/api/v1/wallboard", "/wallboard", "/metrics", "/healthz"):
                assert (await server.get(path, host="rebind.attacker.example")).status == 200
        async with serve(stack.redis_url, CX_API_ALLOWED_HOSTS="worker,cx.internal") as server:
            assert (await server.get(PERSONAL[0], host="worker:6066")).status == 404
            assert (await server.get(PERSONAL[0], host="cx.internal")).status == 404
            assert (await server.get(PERSONAL[0], host="localhost")).status == 403
        async with serve(stack.redis_url, CX_API_ALLOWED_HOSTS="*") as server:
            assert (await server.get(PERSONAL[0], host="anything.example")).status == 404
        async with serve(stack.redis_url, CX_HTTP_HOST="0.0.0.0", CX_API_AUTH="none") as server:
            assert (await server.get(PERSONAL[0], host="rebind.attacker.example")).status == 403

    asyncio.run(scenario())


def test_a_rebound_page_in_a_real_browser_cannot_read_the_open_api(stack: Stack) -> None:
    """Chromium resolves an attacker's host name to the worker's loopback address, as DNS
    rebinding makes it do: that page's fetch of customer data is refused, while the same
    fetch from a page of http://127.0.0.1 is answered."""
    attacker = "rebind.attacker.test"
    browser = Browser((f"--host-resolver-rules=MAP {attacker} 127.0.0.1",))
    fetch = ("fetch('/api/v1/customers/c-1').then(async r => "
             "r.status + ' ' + (await r.json()).error)")

    async def status_from(session: aiohttp.ClientSession, origin: str) -> str:
        page = await Page.open(browser, session, "about:blank")
        await page.call("Page.enable")
        await page.call("Page.navigate", url=f"{origin}/wallboard")
        deadline = asyncio.get_running_loop().time() + 20
        while await page.evaluate("location.href") != f"{origin}/wallboard" or \
                await page.evaluate("document.readyState") != "complete":
            assert asyncio.get_running_loop().time() < deadline, "the page did not load"
            await asyncio.sleep(0.1)
        result = await page.call("Runtime.evaluate", expression=fetch, awaitPromise=True,
                                 returnByValue=True)
        return str(result["result"]["value"])

    async def scenario() -> tuple[str, str]:
        async with serve(stack.redis_url) as server, aiohttp.ClientSession() as session:
            return (await status_from(session, f"http://{attacker}:{server.port}"),
                    await status_from(session, f"http://127.0.0.1:{server.port}"))

    try:
        rebound, local = asyncio.run(scenario())
    finally:
        browser.close()
    assert rebound.startswith("403 this Host is not allowed"), rebound
    assert local == "404 no customer 'c-1'", local


def test_token_mode_does_not_look_at_the_host(stack: Stack) -> None:
    async def scenario() -> None:
        async with serve(stack.redis_url, CX_API_TOKENS=TOKEN) as server:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            for path in PERSONAL:
                answer = await server.get(path, host="any.example", headers=auth)
                assert answer.status in (200, 404), answer
                answer = await server.get(path, host="localhost")
                assert answer.status == 401, answer  # a token is what counts

    asyncio.run(scenario())


def test_allowed_hosts_setting_is_checked_at_start() -> None:
    for bad in ("localhost:6066", "[::1]:6066", "a b", "", "http://localhost"):
        with pytest.raises(ConfigError, match=r"^CX_API_ALLOWED_HOSTS"):
            load_settings({"CX_API_ALLOWED_HOSTS": bad})
    assert load_settings({"CX_API_ALLOWED_HOSTS": "::1, Worker."}).api_allowed_hosts == (
        "[::1]", "worker")


# --- tokens --------------------------------------------------------------------------------

def test_a_deleted_tokens_file_accepts_no_token_until_it_is_back(
        stack: Stack, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")

    async def scenario() -> None:
        async with serve(stack.redis_url, CX_API_TOKENS_FILE=str(tokens)) as server:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            assert (await server.get(PERSONAL[0], headers=auth)).status == 404
            assert (await server.get("/readyz")).status == 200
            tokens.unlink()
            await wait_for(server, lambda: server.guard.readiness() == {
                "api_tokens_file": False})
            answer = await server.get(PERSONAL[0], headers=auth)
            assert answer.status == 401, answer
            ready = await server.get("/readyz")
            assert ready.status == 503
            assert orjson.loads(ready.body)["api_tokens_file"] is False
            tokens.write_text(f"{TOKEN}\n")
            await wait_for(server, lambda: server.guard.readiness() == {
                "api_tokens_file": True})
            assert (await server.get(PERSONAL[0], headers=auth)).status == 404
            assert (await server.get("/readyz")).status == 200

    asyncio.run(scenario())


async def wait_for(server: Server, check: Any, timeout: float = 10) -> None:
    """The file is looked at no more than once a second: wait for the guard to see it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "the guard did not see the file"
        await asyncio.sleep(0.1)


def test_short_and_placeholder_tokens_are_refused_at_start(tmp_path: Path) -> None:
    placeholder = "replace-with-a-long-random-token"
    for name in ("CX_METRICS_TOKEN", "CX_HEALTH_TOKEN", "CX_API_TOKENS"):
        with pytest.raises(ConfigError, match=f"^{name}: each token must have at least 16"):
            load_settings({name: "short-token"})
        with pytest.raises(ConfigError, match=f"^{name}: .*placeholder"):
            load_settings({name: placeholder})
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{placeholder}\n")
    with pytest.raises(ConfigError, match=r"^CX_API_TOKENS_FILE: .*placeholder"):
        HttpGuard(load_settings({"CX_API_TOKENS_FILE": str(tokens)}))


# --- the cost of FCR requests --------------------------------------------------------------

def test_a_long_range_read_in_pieces_sums_every_hour_once(stack: Stack) -> None:
    """Counts in hours spread over 60 days and 6 partitions, read back over ranges that start
    and end inside a day: each hour of the range counted once, none outside it."""
    first = 1777852800  # 2026-05-04T00:00:00Z
    hours = [first + 3600 * (7 * i + 5) for i in range(205)]  # every 7 hours, 60 days

    async def scenario() -> None:
        async with serve(stack.redis_url) as server:
            pipe = server.state.client.pipeline(transaction=False)
            for i, hour in enumerate(hours):
                pipe.hset(server.state.hour_key(i % 6, hour), mapping={
                    "all|fcr_total": 3, "all|unresolved": 1, "all|resolved": i % 2,
                    "queue:q{1}|fcr_total": 1})
            await pipe.execute()
            for lo, hi in ((0, 205), (3, 200), (17, 18), (40, 139)):
                start, end = hours[lo], hours[hi - 1] + 3600
                query = (f"from={time_text(start)}&to={time_text(end)}")
                body = orjson.loads((await server.get(f"/api/v1/fcr?{query}")).body)
                n = hi - lo
                resolved = sum(i % 2 for i in range(lo, hi))
                assert (body["total"], body["unresolved"], body["resolved"]) == (
                    3 * n, n, resolved), (lo, hi)
                assert body["pending"] == 2 * n - resolved
                queue = orjson.loads((await server.get(
                    f"/api/v1/fcr?{query}&queue=q%7B1%7D")).body)
                assert queue["total"] == n
                # The sums made inside Redis equal those of the hour-by-hour read.
                fields = ["all|fcr_total", "all|unresolved", "all|resolved"]
                spread = list(range(start, end, 3600))
                assert await server.state.read_counters(6, spread, fields) == [
                    3 * n, n, resolved]
            # A Redis that lost its scripts (a restart) gets the script again.
            await server.state.client.script_flush()
            body = orjson.loads((await server.get(f"/api/v1/fcr?{query}")).body)
            assert body["total"] == 3 * (139 - 40)

    asyncio.run(scenario())


def time_text(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_fcr_requests_beyond_the_line_get_429_and_the_others_are_answered(
        stack: Stack) -> None:
    """CX_API_MAX_FCR=1: one computes, four wait their turn, the rest are told to retry."""
    long_range = "from=2025-01-01T00:00:00Z&to=2026-02-01T00:00:00Z"  # 396 days

    async def scenario() -> None:
        async with serve(stack.redis_url, CX_API_MAX_FCR="1") as server:
            server.hold = asyncio.Event()  # the first one holds its slot until released
            tasks = [asyncio.create_task(server.get(f"/api/v1/fcr?{long_range}"))
                     for _ in range(12)]
            deadline = asyncio.get_running_loop().time() + 30
            while sum(t.done() for t in tasks) < 7:
                assert asyncio.get_running_loop().time() < deadline, "no 429 came back"
                await asyncio.sleep(0.05)
            refused = [t.result() for t in tasks if t.done()]
            assert server.served == [1]  # one computing; four waiting for its slot
            server.hold.set()
            answered = [a for a in await asyncio.gather(*tasks) if a not in refused]
            for answer in refused:
                assert answer.status == 429, answer
                assert answer.headers["retry-after"] == "1"
                assert "too many FCR requests" in answer.error()
            assert [a.status for a in answered] == [200] * 5
            for answer in answered:
                body = orjson.loads(answer.body)
                assert (body["from"], body["total"]) == ("2025-01-01T00:00:00.000Z", 0)
            assert len(server.served) == 5

    asyncio.run(scenario())
