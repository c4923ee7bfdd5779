"""Prometheus metrics of the worker, all in one registry the HTTP adapter exposes.

Label values are bound once per topic and reason at start, so the hot path never looks up
label sets per event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from service.domain.events import RejectReason

# `*_created` series double the output and no dashboard uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
_ROUND_TRIP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class PipelineMetrics:
    def __init__(self, topics: Iterable[str], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "cx_events_consumed", "Input messages consumed, valid or not.", ["topic"], registry=r
        )
        self.applied = Counter(
            "cx_events_applied",
            "Valid events whose effects were stored in Redis for the first time.",
            ["topic"], registry=r,
        )
        self.duplicates = Counter(
            "cx_events_duplicate",
            "Valid events dropped because their event_id was already applied.",
            ["topic"], registry=r,
        )
        self.invalid = Counter(
            "cx_events_invalid",
            "Input messages sent to the dead-letter topic, by reason.",
            ["topic", "reason"], registry=r,
        )
        self.outputs_too_large = Counter(
            "cx_outputs_too_large",
            "Output records Kafka refused as too large; a small dead letter was published in "
            "place of each.", ["topic"], registry=r,
        )
        self.state_errors = Counter(
            "cx_state_errors",
            "Stored customer states the worker could not decode or settle when their timer "
            "fell due, with no event of theirs in the batch: the timer is dropped, the state "
            "left as stored.", registry=r,
        )
        self.suppressed = Counter(
            "cx_events_suppressed",
            "Input messages of erased customers (`cx-stream erase`), dropped without effect: "
            "their events, and invalid messages keyed by their id (not dead-lettered).",
            ["topic"], registry=r,
        )
        self.retries = Counter(
            "cx_dependency_retries",
            "Failed attempts to reach a dependency that the worker retried.",
            ["dependency"], registry=r,
        )
        self.batch_events = Histogram(
            "cx_batch_events", "Events per applied batch.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.redis_round_trip = Histogram(
            "cx_redis_round_trip_seconds",
            "Time of one pipelined Redis round trip applying a batch.",
            buckets=_ROUND_TRIP_BUCKETS, registry=r,
        )
        self.dependency_up = Gauge(
            "cx_dependency_up",
            "1 when the last call to the dependency succeeded, 0 while it fails.",
            ["dependency"], registry=r,
        )
        latency_buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600,
                           86400)
        self.event_latency = Histogram(
            "cx_event_latency_seconds",
            "From an event's occurred_at to the moment its effects were stored.",
            buckets=latency_buckets, registry=r)
        self.broker_latency = Histogram(
            "cx_broker_latency_seconds",
            "From the broker's timestamp of a message to the moment its effects were stored.",
            buckets=latency_buckets, registry=r)
        self.lag = Gauge("cx_consumer_lag_messages",
                         "Messages of an assigned input partition not applied yet.",
                         ["topic", "partition"], registry=r)
        self.contacts = Counter("cx_contacts", "Contacts seen for the first time.",
                                ["queue", "channel", "outcome"], registry=r)
        self.repeats = Counter("cx_repeat_contacts",
                               "Contacts found to be repeats (counted once per contact).",
                               ["queue", "channel"], registry=r)
        self.transfers = Counter("cx_transfers", "Transfer events applied, by the queue "
                                 "transferred from.", ["queue"], registry=r)
        self.surveys = Counter("cx_surveys", "Survey events applied, by source.", ["source"],
                               registry=r)
        self.corrections = Counter(
            "cx_contact_corrections",
            "New versions of already published contacts (late events, window closes).",
            registry=r)
        self.state_reads = Counter(
            "cx_state_reads", "Customer states a batch needed, by where they came from: "
            "`memory` (kept since this worker's last commit) or `redis`.", ["source"],
            registry=r)
        self.state_reads_memory = self.state_reads.labels("memory")
        self.state_reads_redis = self.state_reads.labels("redis")
        self.state_cache_bytes = Gauge(
            "cx_state_cache_bytes", "Estimated memory of the customer states kept between "
            "batches (CX_STATE_CACHE_MB bounds it).", registry=r)
        self.loop_lag = Histogram(
            "cx_event_loop_lag_seconds",
            "How late the worker's event loop ran a task due every 100 ms: how long the "
            "loop was held by one piece of work (a batch's fold, a gauge refresh, a lookup).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r)
        self.topics = tuple(topics)
        self.consumed_by_topic = {t: self.consumed.labels(t) for t in self.topics}
        self.applied_by_topic = {t: self.applied.labels(t) for t in self.topics}
        self.duplicates_by_topic = {t: self.duplicates.labels(t) for t in self.topics}
        self.suppressed_by_topic = {t: self.suppressed.labels(t) for t in self.topics}
        self.invalid_by_topic_reason = {
            (t, reason.value): self.invalid.labels(t, reason.value)
            for t in self.topics
            for reason in RejectReason
        }
        for dependency in ("redis", "kafka"):
            self.dependency_up.labels(dependency).set(1)
            self.retries.labels(dependency)


async def watch_loop_lag(lag: Histogram, interval: float = 0.1,
                         clock: Callable[[], float] = time.perf_counter) -> None:
    """Sleep `interval` again and again and record how late each wake-up came (until
    cancelled)."""
    while True:
        due = clock() + interval
        await asyncio.sleep(interval)
        lag.observe(max(0.0, clock() - due))
