"""What the ingest loop needs to know besides its ports, and how the configuration gives it."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.config import Settings
from service.domain.cardinality import LabelCaps
from service.domain.policy import Policy
from service.domain.validation import DoorLimits
from service.service_layer.dead_letters import DEAD_LETTER_MAX_COPY
from service.service_layer.outbox import Topics
from service.service_layer.partition_step import Lagging, StepRules


@dataclass(frozen=True)
class IngestSettings:
    """What the ingest loop needs to know besides its ports."""

    topics: Topics
    rules: StepRules
    max_event_bytes: int
    retry_max_backoff: float
    door: DoorLimits = field(default_factory=DoorLimits)
    dead_letter_max_copy: int = DEAD_LETTER_MAX_COPY

    @staticmethod
    def of(settings: Settings, policy: Policy, lagging: Lagging, caps: LabelCaps
           ) -> IngestSettings:
        """The worker's (and a rebuild's) ingest settings, from the configuration. `caps`:
        the queue, segment and agent names with counters of their own (shared with the
        gauges, whose refresh ranks them)."""
        return IngestSettings(
            topics=Topics(settings.topic_dead_letter, settings.topic_contact_enriched,
                          settings.topic_customer_alerts),
            rules=StepRules(
                policy=policy, topic_kinds=settings.topic_kinds,
                input_topics=tuple(settings.input_topics),
                max_contacts=settings.max_contacts_per_customer,
                caps=caps,
                dead_letter_max_copy=settings.dead_letter_max_copy, lagging=lagging),
            max_event_bytes=settings.max_event_bytes,
            retry_max_backoff=settings.retry_max_backoff,
            door=DoorLimits(settings.max_event_depth, settings.max_clock_skew),
            dead_letter_max_copy=settings.dead_letter_max_copy)
