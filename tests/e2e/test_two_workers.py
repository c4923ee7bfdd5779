"""Two workers in one group: what Prometheus sums stays right (docs/metrics.md)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import pytest

from service.adapters.kafka_admin import ensure_topics
from service.config import load_settings
from service.tools.traffic import TrafficModel
from tests.support.engine_state import wait_settled
from tests.support.stack import Stack, Worker, free_port, produce, wait_until

pytestmark = pytest.mark.e2e
KINDS = ("call-ended", "transfer", "survey-answered")


def test_two_workers_split_the_work_and_agree_on_the_business_figures(
    stack: Stack, tmp_path: Path
) -> None:
    ns = stack.namespace()
    asyncio.run(ensure_topics(load_settings(ns.settings_env())))
    start = datetime.fromisoformat("2026-08-03T06:00:00+00:00").timestamp()
    messages = TrafficModel(start=start, contacts_per_second=0.1, customers=2000, seed=9,
                            duplicate_share=0.0, malformed_share=0.0).advance(start + 6 * 3600)
    first = Worker(ns, tmp_path / "w1.log")
    ns.http_port = free_port()
    second = Worker(ns, tmp_path / "w2.log")
    workers = (first, second)
    try:
        for worker in workers:
            worker.wait_ready()
        asyncio.run(produce(stack.kafka_bootstrap,
                            [(ns.topic(m.kind), m.key, m.value) for m in messages]))
        wait_settled(ns, len(messages), what="all applied")

        def applied(worker: Worker) -> float:
            return sum(worker.metric("cx_events_applied_total", topic=ns.topic(k))
                       for k in KINDS)

        totals = [applied(w) for w in workers]
        assert sum(totals) == len(messages)  # per-process counters: sum them
        assert all(t > 0 for t in totals)  # both took partitions

        labels = {"window": "24h", "queue": "", "channel": "", "segment": "", "agent": "",
                  "policy_version": "1"}

        def gauges(worker: Worker) -> tuple[float, float, float]:
            return (worker.metric("cx_fcr_provisional_ratio", **labels),
                    worker.metric("cx_window_contacts", **labels),
                    worker.metric("cx_watermark_timestamp_seconds"))

        # Service-wide gauges: the same in every worker (aggregate with max, not sum).
        # A refresh that began before the last batch was stored publishes the figures of that
        # moment: wait for one that began after it, in both workers.
        contacts = sum(1 for m in messages if m.kind == "call-ended")
        try:
            wait_until(lambda: gauges(first) == gauges(second)
                       and gauges(first)[1] == contacts,
                       timeout=30, what="both workers' gauges refreshed after the last event")
        except AssertionError:
            raise AssertionError(f"{gauges(first)} vs {gauges(second)}; "
                                 f"{contacts} contacts") from None
    finally:
        for worker in workers:
            assert worker.stop() == 0, worker.logs()
