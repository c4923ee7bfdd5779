"""Building an IngestProcessor in tests: a sink to the real Kafka, and the settings."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaProducer

from service.adapters.failures import kafka_transient
from service.config import Settings
from service.domain.policy import Policy
from service.service_layer.ingest import IngestSettings
from service.service_layer.outbox import Topics
from service.service_layer.partition_step import Lagging, StepRules
from service.service_layer.ports import OutputRecord


class KafkaSink:
    """Publishes outputs to the namespace's real output topics."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer

    async def send(self, records: Sequence[OutputRecord]) -> None:
        futures = [await self._producer.send(t, value=v, key=k) for t, k, v in records]
        await asyncio.gather(*futures)

    def is_transient(self, exc: BaseException) -> bool:
        return kafka_transient(exc)


def _never(topic: str, partition: int, last: int | None) -> bool:
    return False


def settings_for(s: Settings, *, policy: Policy | None = None, lagging: Lagging = _never,
                 max_contacts: int = 0, retry_max_backoff: float = 0.1) -> IngestSettings:
    """Ingest settings for the namespace's topics, with the default limits."""
    return settings_of(Topics(s.topic_dead_letter, s.topic_contact_enriched,
                              s.topic_customer_alerts), s.topic_kinds,
                       policy=policy, lagging=lagging, max_contacts=max_contacts,
                       input_topics=tuple(s.input_topics), max_event_bytes=s.max_event_bytes,
                       retry_max_backoff=retry_max_backoff)


def settings_of(topics: Topics, topic_kinds: Mapping[str, str], *,
                policy: Policy | None = None, lagging: Lagging = _never, max_contacts: int = 0,
                input_topics: tuple[str, ...] = (), max_event_bytes: int = 4 * 1024 * 1024,
                retry_max_backoff: float = 0.1) -> IngestSettings:
    return IngestSettings(
        topics=topics,
        rules=StepRules(policy=policy or Policy(), topic_kinds=topic_kinds,
                        input_topics=input_topics, max_contacts=max_contacts,
                        lagging=lagging),
        max_event_bytes=max_event_bytes, retry_max_backoff=retry_max_backoff)
