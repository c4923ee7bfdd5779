"""The business gauges' refresh over counters of every kind of dimension a worker writes: the
gauged ones (all, queue, channel, agent, segment) get series; reasons, repeat drivers and the
agents' per-queue counters are read elsewhere and must not disturb them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from service.adapters.business_metrics import BusinessMetrics
from service.domain.partition import PartitionClock
from service.domain.policy import Policy

HOUR = 3600
WATERMARK = 1_000 * HOUR + 1800.0
COUNTERS = {  # one hour's counters of one partition
    "all|contacts": 3, "all|handled": 3, "all|fcr_total": 3, "all|unresolved": 1,
    "all|ces_sum": 4, "all|ces_count": 1, "all|csat_sum": 9, "all|csat_count": 2,
    "queue:billing|contacts": 3, "queue:billing|handled": 3, "queue:billing|fcr_total": 3,
    "queue:billing|unresolved": 1, "queue:billing|ces_sum": 4, "queue:billing|ces_count": 1,
    "reason:card|contacts": 2, "reason:card|fcr_total": 2, "reason:card|ces_count": 1,
    "queue_reason:billing>card|fcr_total": 2, "queue_agent:billing>a1|fcr_total": 2,
    "flow:billing>transfer|unresolved": 1, "agent_in_queue:7:billinga1|handled": 2,
    "agent_in_queue:7:billinga1|ces_count": 1,
}


class Counters:
    """The read side the refresh uses, over one partition's counters held in memory."""

    async def read_clocks(self, partitions: int) -> dict[int, PartitionClock]:
        return {0: PartitionClock(watermark=WATERMARK)}

    async def read_buckets_by_hour(self, partitions: int, hours: Sequence[int]
                                   ) -> dict[int, list[dict[str, int]]]:
        return {hour: [COUNTERS] for hour in hours if hour == 1_000 * HOUR}


def test_a_refresh_over_every_kind_of_dimension_sets_the_gauged_series_only() -> None:
    registry = CollectorRegistry()
    metrics = BusinessMetrics(registry, windows=(("24h", 86400.0),), agent_labels=0,
                              policy=Policy())
    asyncio.run(metrics.refresh(Counters(), lambda: 1))  # type: ignore[arg-type]
    assert registry.get_sample_value("cx_metrics_refresh_seconds_count") == 1
    series = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for m in registry.collect() for s in m.samples if s.name == "cx_ces_average"}
    base = {"window": "24h", "queue": "", "channel": "", "segment": "", "agent": "",
            "policy_version": "1"}
    assert series == {
        ("cx_ces_average", tuple(sorted(base.items()))): 4.0,
        ("cx_ces_average", tuple(sorted({**base, "queue": "billing"}.items()))): 4.0,
    }
