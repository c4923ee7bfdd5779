"""A real Prometheus scrapes a real worker while one queue's FCR is driven down."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import pytest

from service.adapters.kafka_admin import ensure_topics
from service.config import load_settings
from service.tools.traffic import QUEUES, TrafficModel
from tests.support.engine_state import wait_settled
from tests.support.prometheus import Prometheus
from tests.support.stack import Stack, Worker, produce, wait_until

pytestmark = pytest.mark.e2e


def test_fcr_alert_fires_for_the_degraded_queue_only(stack: Stack, tmp_path: Path) -> None:
    ns = stack.namespace()
    asyncio.run(ensure_topics(load_settings(ns.settings_env())))
    start = datetime.fromisoformat("2026-07-01T04:00:00+00:00").timestamp()
    model = TrafficModel(start=start, contacts_per_second=0.05, customers=20_000, seed=4,
                         duplicate_share=0.0, malformed_share=0.0, degraded_queues=("billing",))
    messages = model.advance(start + 8 * 3600)
    worker = Worker(ns, tmp_path / "worker.log")
    prometheus = Prometheus(tmp_path, [f"127.0.0.1:{ns.http_port}"])
    try:
        worker.wait_ready()
        asyncio.run(produce(stack.kafka_bootstrap,
                            [(ns.topic(m.kind), m.key, m.value) for m in messages]))

        def below_target() -> set[str]:
            """Queues the worker itself reports under 70% with at least 100 contacts."""
            out = set()
            for queue in QUEUES:
                labels = {"window": "24h", "queue": queue, "channel": "", "segment": "",
                          "agent": "", "policy_version": "1"}
                fcr = worker.metric("cx_fcr_provisional_ratio", **labels)
                if worker.metric("cx_window_contacts", **labels) >= 100 and fcr < 0.70:
                    out.add(queue)
            return out

        wait_settled(ns, len(messages), what="all events applied")
        wait_until(lambda: "billing" in below_target(), timeout=30,
                   what="the degraded queue's FCR under target in the worker's gauges")
        refreshes = worker.metric("cx_metrics_refresh_seconds_count")
        wait_until(lambda: worker.metric("cx_metrics_refresh_seconds_count") > refreshes + 1,
                   timeout=60, what="a gauge refresh after the last event")
        expected = below_target()

        def firing() -> set[str]:
            return {a["labels"]["queue"] for a in prometheus.alerts()
                    if a["labels"]["alertname"] == "CxFcrBelowTarget" and a["state"] == "firing"}

        try:
            wait_until(lambda: firing() == expected, timeout=90, what=f"{expected} firing")
        except AssertionError as exc:
            seen = prometheus.get("/api/v1/query?query=queue:cx_fcr_provisional:ratio_24h")
            contacts = prometheus.get("/api/v1/query?query=queue:cx_window_contacts:24h")
            raise AssertionError(f"{exc}; alerts {prometheus.alerts()}; FCR {seen}; "
                                 f"contacts {contacts}") from None
        assert "billing" in expected
        assert "sales" not in expected
        assert len(expected) < len(QUEUES)
        up = prometheus.get('/api/v1/query?query=up%7Bjob%3D%22cx-stream%22%7D')
        assert up["data"]["result"][0]["value"][1] == "1"
    finally:
        prometheus.stop()
        assert worker.stop() == 0, worker.logs()
