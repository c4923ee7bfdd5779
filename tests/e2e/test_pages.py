"""The pages the worker serves, in a real headless browser (Debian's Chromium), against one real
worker fed with a small contact centre: each page loads with the worker's data, shows the
API's numbers, follows new events, passes axe-core with no serious or critical violation, and
is photographed at 1920x1080 and at a laptop's 1366x768."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson
import pytest

from service.adapters.kafka_admin import ensure_topics
from service.config import load_settings
from tests.support.browser import Browser, Page
from tests.support.stack import Namespace, Stack, Worker, produce, wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
AXE = (Path(__file__).parent / "vendor/axe-core-4.14.1/axe.min.js").read_text()
# A customer id that would be markup if a page wrote it as HTML.
JOURNEY = "<b>cust</b> 7/é"
NONE = "\u2013"  # what a page shows for a missing figure (an en dash)
SCREENS = {"tv": (1920, 1080), "laptop": (1366, 768)}
# Set before any script of the page: what the page logs as errors and what the CSP blocks.
WATCH = """
window.__problems = [];
addEventListener("error", (e) => window.__problems.push("error: " + e.message));
addEventListener("unhandledrejection", (e) => window.__problems.push("rejection: " + e.reason));
document.addEventListener("securitypolicyviolation",
  (e) => window.__problems.push("csp: " + e.violatedDirective + " " + e.blockedURI));
"""


def shown_percent(value: float | None) -> str:
    """As the pages write a ratio: JavaScript's toFixed(1) of 100 times it (half up)."""
    if value is None:
        return NONE
    return f"{Decimal(100 * value).quantize(Decimal('0.1'), ROUND_HALF_UP)}%"


def _whole(value: float) -> str:
    """As the pages write a whole amount: JavaScript's toFixed(0) (half up)."""
    return str(Decimal(value).quantize(Decimal("1"), ROUND_HALF_UP))


def _call(ns: Namespace, contact: str, customer: str, queue: str, at: str, *,
          outcome: str = "handled", agent: str | None = "a1", reason: str | None = None,
          wait: float = 0, segment: str | None = None, **more: Any
          ) -> tuple[str, bytes, bytes]:
    event = {"event_id": f"e-{contact}", "occurred_at": at, "contact_id": contact,
             "customer_id": customer, "started_at": at, "channel": "voice", "queue": queue,
             "outcome": outcome, "agent_id": agent if outcome == "handled" else None,
             "reason": reason, "wait_seconds": wait, "segment": segment, **more}
    return ns.topic("call-ended"), customer.encode(), orjson.dumps(event)


def _at(minute: int, day: str = "2026-06-01", hour: int = 10) -> str:
    return f"{day}T{hour:02d}:{minute:02d}:00Z"


def _history(ns: Namespace) -> list[tuple[str, bytes, bytes]]:
    """A week earlier, then the hours up to now (10:00-11:00 on 2026-06-01): three queues,
    repeats in sales and some in billing, failed self-service in billing, and one customer's
    journey over twelve days that ends at risk. In event-time order (the journey's first
    contacts are older than the allowed lateness once a later hour is read)."""
    out = []
    for hour in range(11):
        for day in ("2026-05-25", "2026-06-01"):
            out += [_call(ns, f"h-{day}-{hour}-{k}", f"h-{day}-cust-{hour % 4}-{k}", "billing",
                          _at(10 * k + 5, day, hour)) for k in range(3)]
    out += [_call(ns, f"bil-{i}", f"bil-cust-{i}", "billing", _at(i)) for i in range(20)]
    out += [_call(ns, f"sal-{i}", f"sal-cust-{i % 5}", "sales", _at(i),
                  agent=f"a{i % 3}", reason=("refund", "delivery", "refund")[i % 3])
            for i in range(20)]
    out += [_call(ns, f"tec-{i}", f"tec-cust-{i}", "tech", _at(i)) for i in range(6)]
    out += [_call(ns, f"ss-{i}", f"ss-cust-{i}", "billing", _at(1), outcome="self_service")
            for i in range(4)]
    out += [_call(ns, f"ss-back-{i}", f"ss-cust-{i}", "billing", _at(5)) for i in range(2)]
    for i in range(12):
        out.append(_call(ns, f"j-{i}", JOURNEY, "sales", _at(2 + 4 * i, f"2026-05-{20 + i}"),
                         wait=300, agent=f"a{i % 2}", segment="gold", reason="refund",
                         outcome="abandoned" if i == 3 else "handled"))
    out.append((ns.topic("transfer"), JOURNEY.encode(), orjson.dumps({
        "event_id": "t-j-2", "occurred_at": _at(11, "2026-05-22"), "contact_id": "j-2",
        "customer_id": JOURNEY, "from_queue": "sales", "to_queue": "billing"})))
    out.append((ns.topic("survey-answered"), JOURNEY.encode(), orjson.dumps({
        "event_id": "s-j-1", "occurred_at": _at(9, "2026-05-21"), "contact_id": "j-1",
        "customer_id": JOURNEY, "source": "sms", "csat": 1, "resolved": False})))
    return sorted(out, key=lambda record: orjson.loads(record[2])["occurred_at"])


@dataclass
class Centre:
    stack: Stack
    ns: Namespace
    worker: Worker
    browser: Browser

    def api(self, path: str) -> Any:
        status, body = self.worker.get(path)
        assert status == 200, (path, body)
        return json.loads(body)

    def send(self, records: list[tuple[str, bytes, bytes]]) -> None:
        asyncio.run(produce(self.stack.kafka_bootstrap, records))


@pytest.fixture(scope="module")
def centre(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Centre]:
    ns = stack.namespace()
    asyncio.run(ensure_topics(load_settings(ns.settings_env())))
    asyncio.run(produce(stack.kafka_bootstrap, _history(ns)))
    worker = Worker(ns, tmp_path_factory.mktemp("pages") / "worker.log",
                    CX_CONTACT_COSTS='{"currency": "USD", "channel": {"voice": 6.5}}',
                    CX_SEGMENT_VALUES='{"gold": 900, "*": 30}')
    browser = Browser()
    try:
        worker.wait_ready()
        wait_until(lambda: worker.get(f"/api/v1/customers/{quote(JOURNEY, safe='')}/journey")[0]
                   == 200 and len(json.loads(worker.get("/api/v1/wallboard")[1])["queues"]) == 3,
                   timeout=60, what="the worker's first figures")
        yield Centre(stack, ns, worker, browser)
    finally:
        browser.close()
        assert worker.stop() == 0, worker.logs()


async def _open(centre: Centre, session: aiohttp.ClientSession, path: str,
                screen: str = "tv") -> Page:
    page = await Page.open(centre.browser, session, "about:blank")
    width, height = SCREENS[screen]
    await page.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                    deviceScaleFactor=1, mobile=False)
    await page.call("Page.enable")
    await page.call("Page.addScriptToEvaluateOnNewDocument", source=WATCH)
    await page.call("Page.navigate", url=centre.worker.base_url + path)
    return page


async def _until(page: Page, expression: str, expected: Callable[[], Any],
                 timeout: float = 30) -> Any:
    """Wait until the page's `expression` equals `expected()` (asked again each time: the
    API's answer may move on while the page follows it); the last value seen."""
    deadline = time.monotonic() + timeout
    seen: Any = None
    while time.monotonic() < deadline:
        seen = await page.evaluate(expression)
        if seen == expected():
            return seen
        await asyncio.sleep(0.25)
    return seen


def _text(selector: str) -> str:
    return f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent || null"


def _texts(selector: str) -> str:
    return (f"[...document.querySelectorAll({json.dumps(selector)})]"
            ".map((e) => e.textContent)")


async def _serious_violations(page: Page) -> list[str]:
    await page.call("Runtime.evaluate", expression=AXE)
    result = await page.call(
        "Runtime.evaluate", awaitPromise=True, returnByValue=True,
        expression="axe.run(document, {resultTypes: ['violations']}).then((r) => "
                   "r.violations.filter((v) => ['serious', 'critical'].includes(v.impact))"
                   ".map((v) => v.id + ': ' + v.nodes.map((n) => n.target).join(' ')))")
    return list(result["result"]["value"])


async def _look(page: Page, name: str, screen: str) -> dict[str, Any]:
    """Problems, axe's serious violations, horizontal overflow, and a screenshot."""
    shot = await page.screenshot()
    return {
        "name": name, "screen": screen, "shot": shot,
        "png": shot.startswith(b"\x89PNG"),
        "problems": await page.evaluate("window.__problems"),
        "overflow": await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"),
        "axe": await _serious_violations(page),
    }


def _fine(look: dict[str, Any]) -> None:
    """The look is fine; its screenshot kept for a person to look at (`make screenshots`
    points CX_TEST_SCREENSHOTS at docs/, which shows the 1920x1080 ones)."""
    shots = Path(os.environ.get("CX_TEST_SCREENSHOTS") or ROOT / ".cx-test/screenshots/pages")
    shots.mkdir(parents=True, exist_ok=True)
    suffix = "" if look["screen"] == "tv" else f"-{look['screen']}"
    if look["screen"] == "tv" or not os.environ.get("CX_TEST_SCREENSHOTS"):
        (shots / f"{look['name']}{suffix}.png").write_bytes(look["shot"])
    assert look["png"]
    assert look["problems"] == []
    assert look["overflow"] <= 0
    assert look["axe"] == []


def _fetch(centre: Centre, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(centre.worker.base_url + path, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_only_the_pages_files_are_served_with_their_type_and_policy(centre: Centre) -> None:
    pages = ["/wallboard", "/ui/at-risk", "/ui/queues/sales",
             "/ui/customers/" + quote(JOURNEY, safe="")]
    for path in pages:
        status, headers, body = _fetch(centre, path)
        assert status == 200, path
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        policy = headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy
        assert "script-src 'self';" in policy  # no 'unsafe-inline'
        assert "frame-ancestors 'none'" in policy
        scripts = re.findall(rb"<script[^>]*>", body)
        assert scripts
        assert all(b' src="/ui/static/' in tag for tag in scripts)  # no inline script
    for name, kind in (("common.js", "text/javascript"), ("pages.css", "text/css"),
                       ("uPlot.iife.min.js", "text/javascript"), ("uPlot.min.css", "text/css")):
        status, headers, body = _fetch(centre, f"/ui/static/{name}")
        assert (status, headers["Content-Type"]) == (200, f"{kind}; charset=utf-8"), name
        assert body
    # The pages' own endpoints: the journey by any spelling of its path, and refusals.
    encoded = quote(JOURNEY, safe="")
    status, _, body = _fetch(centre, f"/api/v1/customers/{encoded}/%6Aourney")
    assert (status, json.loads(body)["customer_id"]) == (200, JOURNEY)
    assert _fetch(centre, "/api/v1/customers/%FF/journey")[0] == 400
    assert _fetch(centre, "/api/v1/customers/nobody/journey")[0] == 404
    assert _fetch(centre, "/api/v1/fcr/hourly?hours=0")[0] == 400
    assert _fetch(centre, "/api/v1/fcr/hourly?hours=168&segment=gold")[0] == 200
    for path in ("/ui/static/nope.js", "/ui/static/..%2Fhttp.py", "/ui/static/",
                 "/ui/static/vendor/uplot-1.6.32/LICENSE", "/ui/other"):
        assert _fetch(centre, path)[0] == 404, path


def test_wallboard(centre: Centre) -> None:
    board = lambda: centre.api("/api/v1/wallboard")  # noqa: E731
    hourly = lambda: centre.api("/api/v1/fcr/hourly?hours=24")  # noqa: E731

    def busiest(n: int) -> list[str]:
        queues = sorted(board()["queues"], key=lambda q: (-q["contacts_last_hour"], q["queue"]))
        return [f"queue-{q['queue']}" for q in queues[:n]] + ["queue-other"]

    def overall(points: list[dict[str, Any]]) -> str:
        total = sum(p["total"] for p in points)
        return shown_percent(1 - sum(p["unresolved"] for p in points) / total if total else None)

    async def drive() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            out: dict[str, Any] = {}
            page = await _open(centre, session, "/wallboard#queues=2")
            out["fcr"] = await _until(page, _text("#tile-fcr .value"), lambda: shown_percent(
                board()["centre"]["fcr_provisional"]))
            out["now"] = await _until(page, _text("#tile-trend-now .value"),
                                      lambda: overall(hourly()["series"]))
            out["before"] = await _until(page, _text("#tile-trend-before .value"),
                                         lambda: overall(hourly()["week_before"]))
            out["trend_api"] = hourly()
            cost = centre.api("/api/v1/cost?from=2026-05-31T11:00:00Z&to=2026-06-01T11:00:00Z")
            out["cost"] = await _until(page, _text("#tile-repeat-cost .value"),
                                       lambda: _whole(cost["repeat_cost"]))
            out["value"] = await _until(page, _text("#tile-value-at-risk .value"),
                                        lambda: f"{board()['centre']['value_at_risk']:.0f}")
            # Two queue tiles (the busiest) and "other"; a sparkline drawn in each.
            out["tiles"] = await _until(page, "[...document.querySelectorAll('#queues .tile')]"
                                        ".map((e) => e.id)", lambda: busiest(2))
            out["sparks"] = await _until(page, "document.querySelectorAll("
                                         "'#queues .spark canvas').length", lambda: 2)
            out["trend"] = await page.evaluate("document.querySelectorAll('#trend canvas')"
                                               ".length")
            out["tv"] = await _look(page, "wallboard", "tv")
            await page.call("Emulation.setDeviceMetricsOverride", width=1366, height=768,
                            deviceScaleFactor=1, mobile=False)
            out["laptop"] = await _look(page, "wallboard", "laptop")
            # New events: billing's customers call back; the FCR tile follows.
            before = board()["centre"]["fcr_provisional"]
            await produce(centre.stack.kafka_bootstrap, [
                _call(centre.ns, f"bil-back-{i}", f"bil-cust-{i}", "billing", _at(50))
                for i in range(10)])
            wait_until(lambda: board()["centre"]["fcr_provisional"] != before, timeout=60,
                       what="the call-backs in the wallboard's figures")
            out["updated"] = await _until(page, _text("#tile-fcr .value"), lambda: shown_percent(
                board()["centre"]["fcr_provisional"]))
            out["expected"] = shown_percent(board()["centre"]["fcr_provisional"])
            out["first"] = shown_percent(before)
            return out

    out = asyncio.run(drive())
    assert out["fcr"] == out["first"]
    assert out["now"] == overall(out["trend_api"]["series"])
    assert out["before"] == overall(out["trend_api"]["week_before"]) != NONE
    assert out["cost"] is not None
    assert float(out["cost"]) > 0
    assert out["value"] not in (None, "0")
    assert out["tiles"] == ["queue-billing", "queue-sales", "queue-other"]  # 29, 20, 6 calls
    assert out["sparks"] == 2
    assert out["trend"] >= 1
    assert out["updated"] == out["expected"] != out["first"]
    _fine(out["tv"])
    _fine(out["laptop"])


def test_queue_contacts_answers(centre: Centre) -> None:
    for path in ("/api/v1/queues/sales/contacts?limit=0", "/api/v1/queues/sales/contacts?x=1",
                 "/api/v1/queues/sales/contacts?limit=1&limit=2",
                 f"/api/v1/queues/{'q' * 129}/contacts"):
        assert centre.worker.get(path)[0] == 400, path
    two = centre.api("/api/v1/queues/sales/contacts?limit=2")["contacts"]
    assert len(two) == 2
    assert two[0]["occurred_at"] >= two[1]["occurred_at"]
    assert centre.api("/api/v1/queues/nobody/contacts")["contacts"] == []


def test_queue_page(centre: Centre) -> None:
    def fcr() -> dict[str, Any]:
        return centre.api("/api/v1/fcr?from=2026-05-31T11:00:00Z&to=2026-06-01T11:00:00Z"
                          "&queue=sales")

    span = "from=2026-05-31T11:00:00Z&to=2026-06-01T11:00:00Z&queue=sales"

    async def drive() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            out: dict[str, Any] = {}
            page = await _open(centre, session, "/ui/queues/sales")
            out["fcr"] = await _until(page, _text("#tile-fcr .value"),
                                      lambda: shown_percent(fcr()["fcr"]))
            out["fcr_api"] = fcr()
            drivers = centre.api(f"/api/v1/repeat-drivers?{span}&by=reason&limit=10")
            out["drivers"] = await _until(page, _texts("#drivers tbody td:first-child"),
                                          lambda: [r["driver"] for r in drivers["rows"]])
            agents = centre.api(f"/api/v1/agents?{span}&limit=100")
            out["agents"] = await _until(page, _texts("#agents tbody td:first-child"),
                                         lambda: [a["agent"] for a in agents["agents"]])
            out["status"] = await page.evaluate(_texts("#agents tbody td:nth-child(2)"))
            latest = centre.api("/api/v1/queues/sales/contacts?limit=100")
            out["latest_api"] = latest
            out["latest"] = await _until(
                page, _texts("#latest tbody td:nth-child(2)"),
                lambda: [c["customer_id"] for c in latest["contacts"]])
            out["pareto"] = await page.evaluate("document.querySelectorAll('#pareto canvas')"
                                                ".length")
            out["tv"] = await _look(page, "queue", "tv")
            await page.call("Emulation.setDeviceMetricsOverride", width=1366, height=768,
                            deviceScaleFactor=1, mobile=False)
            out["laptop"] = await _look(page, "queue", "laptop")
            total = fcr()["total"]
            await produce(centre.stack.kafka_bootstrap, [
                _call(centre.ns, f"sal-new-{i}", f"sal-new-cust-{i}", "sales", _at(51))
                for i in range(3)])
            wait_until(lambda: fcr()["total"] == total + 3, timeout=60,
                       what="the new sales calls counted")
            out["population"] = await _until(page, _text("#tile-population .value"),
                                             lambda: str(total + 3))
            out["latest_new"] = await _until(
                page, _texts("#latest tbody td:nth-child(2)") + ".slice(0, 3)",
                lambda: [f"sal-new-cust-{i}" for i in range(3)])
            out["expected"] = str(total + 3)
            out["drivers_api"] = [r["driver"] for r in drivers["rows"]]
            out["agents_api"] = agents
            return out

    out = asyncio.run(drive())
    assert out["fcr"] == shown_percent(out["fcr_api"]["fcr"]) != NONE
    assert out["drivers"] == out["drivers_api"]
    assert "refund" in out["drivers"]
    assert out["agents"] == [a["agent"] for a in out["agents_api"]["agents"]]
    # Fewer than CX_AGENT_MIN_CONTACTS (30) contacts each: none ranked, each says why.
    assert out["status"]
    assert all(s.startswith("not enough contacts") for s in out["status"])
    assert out["pareto"] >= 1
    assert out["population"] == out["expected"]
    # The queue's contacts of the last hour, newest first (10:19 back to 10:00), with their
    # verdicts: sal-cust-{i % 5} came back from the sixth call on.
    latest = out["latest_api"]["contacts"]
    assert [c["contact_id"] for c in latest] == [f"sal-{i}" for i in reversed(range(20))]
    assert [c["is_repeat"] for c in latest] == [i >= 5 for i in reversed(range(20))]
    assert {c["queue"] for c in latest} == {"sales"}
    assert out["latest"] == [c["customer_id"] for c in latest]
    assert out["latest_new"] == [f"sal-new-cust-{i}" for i in range(3)]
    _fine(out["tv"])
    _fine(out["laptop"])


def test_customer_journey(centre: Centre) -> None:
    path = f"/api/v1/customers/{quote(JOURNEY, safe='')}/journey"

    async def drive() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            out: dict[str, Any] = {}
            page = await _open(centre, session, f"/ui/customers/{quote(JOURNEY, safe='')}")
            journey = centre.api(path)
            out["title"] = await _until(page, _text("h1"), lambda: f"Customer {JOURNEY}")
            out["bold"] = await page.evaluate("document.querySelectorAll('h1 b').length")
            out["rows"] = await _until(page, "document.querySelectorAll('#timeline tbody tr')"
                                       ".length", lambda: len(centre.api(path)["contacts"]))
            out["score"] = await _until(page, _text("#tile-score .value"),
                                        lambda: f"{centre.api(path)['score']:.1f}")
            out["repeat_links"] = await page.evaluate(
                _texts("#timeline a[data-target]"))
            out["transfers"] = await page.evaluate(_texts("#timeline tbody td:nth-child(8)"))
            out["surveys"] = await page.evaluate(_texts("#timeline tbody td:nth-child(9)"))
            out["curve"] = await page.evaluate("document.querySelectorAll('#curve canvas')"
                                               ".length")
            out["journey"] = journey
            out["tv"] = await _look(page, "customer-journey", "tv")
            await page.call("Emulation.setDeviceMetricsOverride", width=1366, height=768,
                            deviceScaleFactor=1, mobile=False)
            out["laptop"] = await _look(page, "customer-journey", "laptop")
            await produce(centre.stack.kafka_bootstrap, [
                _call(centre.ns, "j-new", JOURNEY, "billing", _at(52), segment="gold")])
            wait_until(lambda: centre.api(path)["contacts_held"] == 13, timeout=60,
                       what="the new contact in the journey")
            out["after"] = await _until(page, "document.querySelectorAll('#timeline tbody tr')"
                                        ".length", lambda: 13)
            return out

    out = asyncio.run(drive())
    journey = out["journey"]
    assert out["title"] == f"Customer {JOURNEY}"
    assert out["bold"] == 0  # the id is text, never markup
    assert out["rows"] == len(journey["contacts"]) == 12
    assert out["score"] == f"{journey['score']:.1f}"
    repeats = [c["repeat_of"] for c in journey["contacts"] if c["repeat_of"]]
    assert repeats
    assert out["repeat_links"] == repeats
    assert out["transfers"][2] == "sales → billing"
    assert out["surveys"][1] == "CSAT 1 · said unresolved"
    assert out["curve"] >= 1
    assert out["after"] == 13
    _fine(out["tv"])
    _fine(out["laptop"])


def test_at_risk(centre: Centre) -> None:
    def risk() -> dict[str, Any]:
        return centre.api("/api/v1/customers/at-risk?" + urlencode({"limit": 100}))

    async def drive() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            out: dict[str, Any] = {}
            page = await _open(centre, session, "/ui/at-risk")
            out["total"] = await _until(page, _text("#tile-total .value"),
                                        lambda: str(risk()["total"]))
            out["links"] = await _until(
                page, "[...document.querySelectorAll('#list tbody a')].map((a) => "
                      "[a.textContent, a.getAttribute('href')])",
                lambda: [[c["customer_id"], "/ui/customers/" + quote(c["customer_id"], safe="")]
                         for c in risk()["customers"]])
            out["tv"] = await _look(page, "at-risk", "tv")
            await page.call("Emulation.setDeviceMetricsOverride", width=1366, height=768,
                            deviceScaleFactor=1, mobile=False)
            out["laptop"] = await _look(page, "at-risk", "laptop")
            total = risk()["total"]
            await produce(centre.stack.kafka_bootstrap, [
                _call(centre.ns, "angry-1", "angry-cust", "tech", _at(53), complaint=True)])
            wait_until(lambda: risk()["total"] == total + 1, timeout=60,
                       what="the complaining customer on the work list")
            out["after"] = await _until(page, _text("#tile-total .value"),
                                        lambda: str(total + 1))
            out["expected"] = str(total + 1)
            out["first"] = risk()
            return out

    out = asyncio.run(drive())
    assert JOURNEY in [c for c, _ in out["links"]]
    assert int(out["total"]) >= 1
    assert out["after"] == out["expected"]
    _fine(out["tv"])
    _fine(out["laptop"])
