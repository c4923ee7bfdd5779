"""The built-in wallboard in a real headless browser (Debian's Chromium)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from service.adapters.kafka_admin import ensure_topics
from service.config import load_settings
from tests.support.browser import Browser, Page
from tests.support.stack import Namespace, Stack, Worker, produce, wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def _calls(ns: Namespace, queue: str, start: int, n: int,
           customers: int) -> list[tuple[str, bytes, bytes]]:
    """n handled calls on the queue, every `customers`-th one a repeat of the same customer."""
    out = []
    for i in range(start, start + n):
        customer = f"{queue}-cust-{i % customers}"
        minute = i % 60
        event = {"event_id": f"{queue}-{i}", "occurred_at": f"2026-06-01T10:{minute:02d}:00Z",
                 "contact_id": f"{queue}-c{i}", "customer_id": customer,
                 "started_at": f"2026-06-01T10:{minute:02d}:00Z", "channel": "voice",
                 "queue": queue, "outcome": "handled", "agent_id": "a1"}
        out.append((ns.topic("call-ended"), customer.encode(), orjson.dumps(event)))
    return out


def _shown(value: float) -> str:
    return f"{100 * value:.1f}%"


async def _wait_text(page: Page, selector: str, expected: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = await page.evaluate(
            f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent || ''")
        if text == expected:
            return text
        await asyncio.sleep(0.3)
    return text


def test_wallboard_shows_the_numbers_and_updates_live(stack: Stack, tmp_path: Path) -> None:
    ns = stack.namespace()
    asyncio.run(ensure_topics(load_settings(ns.settings_env())))
    # billing: 20 calls by 20 customers (no repeats); sales: 20 calls by 5 customers.
    asyncio.run(produce(stack.kafka_bootstrap, _calls(ns, "billing", 0, 20, 20)
                        + _calls(ns, "sales", 0, 20, 5)))
    worker = Worker(ns, tmp_path / "worker.log",
                    CX_CONTACT_COSTS='{"currency": "USD", "channel": {"voice": 6.5}}')
    browser = Browser()
    try:
        worker.wait_ready()

        def board() -> dict:
            return json.loads(worker.get("/api/v1/wallboard")[1])

        wait_until(lambda: len(board()["queues"]) == 2, timeout=60, what="wallboard data")
        first = board()
        assert first["centre"]["contacts_last_hour"] == 40
        # The same refresh's driver and cost gauges: sales' 5 customers called 4 times each
        # (15 unresolved, no reason: `unknown`); 40 handled voice calls at 6.50.
        gauges = worker.metrics()
        assert gauges[("cx_repeat_driver_unresolved", frozenset({
            "window": "24h", "by": "queue", "driver": "sales",
            "policy_version": "1"}.items()))] == 15
        assert gauges[("cx_repeat_driver_unresolved", frozenset({
            "window": "24h", "by": "reason", "driver": "unknown",
            "policy_version": "1"}.items()))] == 15
        assert gauges[("cx_contact_cost", frozenset({
            "window": "24h", "queue": "", "channel": "", "segment": "", "agent": "",
            "currency": "USD", "policy_version": "1"}.items()))] == 260.0

        async def drive() -> tuple[str, str, str, str, bytes]:
            async with aiohttp.ClientSession() as session:
                page = await Page.open(browser, session, f"{worker.base_url}/wallboard")
                await page.call("Runtime.enable")
                fcr = await _wait_text(page, "#tile-fcr .value",
                                       _shown(first["centre"]["fcr_provisional"]))
                sales_class = await page.evaluate(
                    "document.querySelector('#queue-sales').className")
                billing_class = await page.evaluate(
                    "document.querySelector('#queue-billing').className")
                # New events: billing's customers call back, its FCR falls on the same page.
                await produce(stack.kafka_bootstrap, _calls(ns, "billing", 20, 20, 20))
                wait_until(lambda: board()["centre"]["contacts_last_hour"] == 60, timeout=60,
                           what="the new events in the wallboard data")
                after = board()["centre"]["fcr_provisional"]
                updated = await _wait_text(page, "#tile-fcr .value", _shown(after))
                shot = await page.screenshot()
                return fcr, updated, sales_class, billing_class, shot

        fcr, updated, sales_class, billing_class, shot = asyncio.run(drive())
    finally:
        browser.close()
        assert worker.stop() == 0, worker.logs()
    assert fcr == _shown(first["centre"]["fcr_provisional"])
    assert updated != fcr
    assert "bad" in sales_class  # 5 customers calling 4 times each: FCR 25%
    assert "good" in billing_class  # no repeats yet: 100%
    assert shot.startswith(b"\x89PNG")
    # Kept for a person to look at; `make screenshots` points this at docs/.
    shots = Path(os.environ.get("CX_TEST_SCREENSHOTS") or ROOT / ".cx-test/screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    (shots / "wallboard.png").write_bytes(shot)
