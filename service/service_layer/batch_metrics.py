"""The pipeline's metrics of one applied batch: what was applied, dead-lettered while applying
and published, and how late the events came (docs/metrics.md)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from service.adapters.metrics import PipelineMetrics
from service.domain.cardinality import LabelCaps
from service.domain.events import ContactEvent, SurveyAnswered, Transfer
from service.service_layer.dead_letters import InputMessage
from service.service_layer.partition_step import PartitionPlan

Valid = Mapping[int, Sequence[tuple[InputMessage, ContactEvent]]]
Skip = Mapping[int, Mapping[tuple[str, int], str]]  # partition -> (topic, offset) -> why


def count_applied(m: PipelineMetrics, plan: PartitionPlan) -> None:
    """Per topic: events applied, duplicates, and those dead-lettered while applying."""
    for topic, (applied, dups, _late) in plan.per_topic.items():
        m.applied_by_topic[topic].inc(applied)
        m.duplicates_by_topic[topic].inc(dups)
    for topic, reason in plan.late:
        m.invalid_by_topic_reason[(topic, reason)].inc()
    if plan.state_errors:
        m.state_errors.inc(len(plan.state_errors))


def observe_published(m: PipelineMetrics, valid: Valid, plans: Mapping[int, PartitionPlan],
                      skipped: Skip, caps: LabelCaps | None) -> None:
    """Latencies of this batch, and the business counters of what it published (the
    events `skipped` were quarantined, not applied)."""
    now = time.time()
    transfers: dict[str, int] = {}
    surveys: dict[str, int] = {}
    for p, items in valid.items():
        skip = skipped.get(p)
        for msg, event in items:
            if skip and (msg.topic, msg.offset) in skip:
                continue
            m.event_latency.observe(max(0.0, now - event.header.occurred_at.timestamp()))
            if msg.timestamp_ms:
                m.broker_latency.observe(max(0.0, now - msg.timestamp_ms / 1000))
            if isinstance(event, Transfer):
                transfers[event.from_queue] = transfers.get(event.from_queue, 0) + 1
            elif isinstance(event, SurveyAnswered):
                surveys[event.source] = surveys.get(event.source, 0) + 1
    queue_of = caps.queue.label if caps is not None else str
    for queue, n in transfers.items():
        m.transfers.labels(queue_of(queue)).inc(n)
    for source, n in surveys.items():
        m.surveys.labels(source).inc(n)
    contacts: dict[tuple[str, str, str], int] = {}
    repeats: dict[tuple[str, str], int] = {}
    corrections = 0
    for plan in plans.values():
        for kind, labels, n in plan.published:
            if kind == "contact":
                contacts[labels] = contacts.get(labels, 0) + n
            elif kind == "repeat":
                repeats[labels[:2]] = repeats.get(labels[:2], 0) + n
            else:
                corrections += n
    for (queue, channel, outcome), n in contacts.items():
        m.contacts.labels(queue_of(queue), channel, outcome).inc(n)
    for (queue, channel), n in repeats.items():
        m.repeats.labels(queue_of(queue), channel).inc(n)
    if corrections:
        m.corrections.inc(corrections)
