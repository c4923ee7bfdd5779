"""How long the customer journey page takes to show a customer with 200 contacts, in Debian's
Chromium: from the start of the navigation to the curve and the timeline drawn (the page's
own performance.now() when it has drawn the first answer), over a real worker.

    .venv/bin/python -m bench.journey_page [contacts] [loads]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import aiohttp
import orjson

from bench.stack import local_stack
from service.adapters.kafka_admin import ensure_topics
from service.config import load_settings
from tests.support.browser import Browser, Page
from tests.support.stack import Namespace, Worker, produce, wait_until

CUSTOMER = "cust-journey-200"
PHASES: list[dict[str, float]] = []  # per load: DOMContentLoaded and the journey's answer (ms)


def journey_events(ns: Namespace, contacts: int) -> list[tuple[str, bytes, bytes]]:
    """`contacts` contacts of one customer, 90 minutes apart and ending an hour ago, across
    three queues and channels; every fifth transferred, every seventh surveyed."""
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    out = []
    for i in range(contacts):
        at = (end - timedelta(minutes=90 * (contacts - 1 - i))).isoformat().replace("+00:00", "Z")
        queue = ("billing", "sales", "tech")[i % 3]
        outcome = "abandoned" if i % 11 == 5 else "handled"
        out.append((ns.topic("call-ended"), CUSTOMER.encode(), orjson.dumps({
            "event_id": f"e{i}", "occurred_at": at, "contact_id": f"c{i:03d}",
            "customer_id": CUSTOMER, "started_at": at, "channel": ("voice", "chat")[i % 2],
            "queue": queue, "outcome": outcome,
            "agent_id": f"agent-{i % 7}" if outcome == "handled" else None,
            "reason": ("refund", "delivery", "login")[i % 3], "wait_seconds": (i * 37) % 400,
            "segment": "gold"})))
        if i % 5 == 0:
            out.append((ns.topic("transfer"), CUSTOMER.encode(), orjson.dumps({
                "event_id": f"t{i}", "occurred_at": at, "contact_id": f"c{i:03d}",
                "customer_id": CUSTOMER, "from_queue": queue, "to_queue": "billing"})))
        if i % 7 == 0:
            out.append((ns.topic("survey-answered"), CUSTOMER.encode(), orjson.dumps({
                "event_id": f"s{i}", "occurred_at": at, "contact_id": f"c{i:03d}",
                "customer_id": CUSTOMER, "source": "sms", "csat": 1 + i % 5,
                "resolved": i % 2 == 0})))
    return out


async def measure(browser: Browser, url: str, loads: int) -> list[float]:
    """Milliseconds from navigation start to the journey drawn, per load (a new tab each)."""
    out = []
    async with aiohttp.ClientSession() as session:
        for _ in range(loads + 1):  # the first load warms the browser's cache up: not counted
            page = await Page.open(browser, session, url)
            deadline = time.monotonic() + 30
            drawn = None
            while drawn is None and time.monotonic() < deadline:
                drawn = await page.evaluate("document.body && document.body.dataset.drawnAfterMs")
                await asyncio.sleep(0.05)
            assert drawn is not None, "the journey was not drawn within 30 s"
            rows = await page.evaluate("document.querySelectorAll('#timeline tbody tr').length")
            assert rows >= 200, rows
            phases = await page.evaluate(
                "JSON.stringify({dom: performance.getEntriesByType('navigation')[0]"
                ".domContentLoadedEventEnd, api: (performance.getEntriesByType('resource')"
                ".find((e) => e.name.includes('/journey')) || {}).responseEnd})")
            out.append(float(drawn))
            PHASES.append(json.loads(phases))
            await page.call("Page.close")
    return out[1:]


def main() -> None:
    contacts = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    loads = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    with local_stack() as stack:
        ns = Namespace(stack, "journeybench")
        asyncio.run(ensure_topics(load_settings(ns.settings_env())))
        asyncio.run(produce(stack.kafka_bootstrap, journey_events(ns, contacts)))
        worker = Worker(ns, Path(tempfile.mkdtemp()) / "worker.log")
        browser = Browser()
        try:
            worker.wait_ready()
            path = f"/api/v1/customers/{quote(CUSTOMER, safe='')}/journey"
            wait_until(lambda: worker.get(path)[0] == 200 and json.loads(
                worker.get(path)[1])["contacts_held"] == contacts, timeout=120,
                what="every contact held")
            started = time.perf_counter()
            status, body = worker.get(path)
            api_ms = 1000 * (time.perf_counter() - started)
            times = asyncio.run(measure(browser, f"{worker.base_url}/ui/customers/"
                                        f"{quote(CUSTOMER, safe='')}", loads))
        finally:
            browser.close()
            worker.stop()
    print(f"journey of {contacts} contacts: API answer {len(body)} bytes in {api_ms:.0f} ms "
          f"(status {status}); page drawn after median {statistics.median(times):.0f} ms, "
          f"max {max(times):.0f} ms over {loads} loads (Chromium, headless); scripts ready "
          f"after median {statistics.median(p['dom'] for p in PHASES[1:]):.0f} ms, the "
          f"journey's answer received after {statistics.median(p['api'] for p in PHASES[1:]):.0f}"
          " ms")


if __name__ == "__main__":
    main()
