"""Creates and checks cx-stream's topics. The broker's auto-create is never relied on."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from service.adapters.connections import kafka_options, kafka_startup_failure
from service.config import Settings

log = logging.getLogger(__name__)


class TopicLayoutError(RuntimeError):
    """The existing input topics cannot be consumed correctly (e.g. unequal partition counts)."""


def _topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    compacted = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}
    return {
        **{topic: {} for topic in settings.input_topics},
        settings.topic_dead_letter: {},
        settings.topic_contact_enriched: compacted,
        settings.topic_customer_alerts: {},
    }


async def _describe(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    """Partition count of each topic that exists."""
    existing = set(await admin.list_topics())
    wanted = [t for t in topics if t in existing]
    if not wanted:
        return {}
    described: list[dict[str, Any]] = await admin.describe_topics(wanted)
    return {d["topic"]: len(d["partitions"]) for d in described if not d.get("error_code")}


async def partition_counts(settings: Settings, topics: list[str]) -> dict[str, int]:
    """Partition count of each of these topics that exists."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap,
                                request_timeout_ms=15000, **kafka_options(settings))
    await admin.start()
    try:
        return await _describe(admin, topics)
    finally:
        await admin.close()


async def _leaders_elected(admin: AIOKafkaAdminClient, topics: list[str]) -> bool:
    """Whether every partition of these topics has a leader: a consumer that is assigned a
    partition before its leader is known may not fetch it until its next metadata refresh."""
    described: list[dict[str, Any]] = await admin.describe_topics(topics)
    return len(described) == len(topics) and all(
        not d.get("error_code") and d["partitions"]
        and all(p.get("leader", -1) >= 0 and not p.get("error_code") for p in d["partitions"])
        for d in described)


async def ensure_topics(settings: Settings, *, timeout: float = 60.0) -> list[str]:
    """Create the missing topics; return their names. Raise if the input layout is unusable."""
    created, _ = await ensure_layout(settings, timeout=timeout)
    return created


async def ensure_layout(settings: Settings, *, timeout: float = 60.0) -> tuple[list[str], int]:
    """Create the missing topics; return their names and the input topics' partitions."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=15000,
        **kafka_options(settings),
    )
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await admin.start()
            break
        except KafkaError as exc:
            # A refused password or an untrusted certificate will not heal: stop at once.
            failure = await kafka_startup_failure(settings)
            if failure is not None:
                await admin.close()
                raise failure from exc
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.warning("Kafka at %s not reachable yet (%s); retrying", settings.kafka_bootstrap,
                        exc)
            await asyncio.sleep(1.0)
    try:
        configs = _topic_configs(settings)
        counts = await _describe(admin, list(configs))
        inputs = [counts[t] for t in settings.input_topics if t in counts]
        partitions = inputs[0] if inputs else settings.topic_partitions
        created = []
        missing = [t for t in configs if t not in counts]
        if missing:
            response = await admin.create_topics([
                NewTopic(t, partitions, settings.topic_replication, topic_configs=configs[t])
                for t in missing
            ])
            for topic, code, message in (e[:3] for e in response.topic_errors):
                if code == 0:
                    created.append(topic)
                elif code != TopicAlreadyExistsError.errno:
                    # created a moment ago by another worker is fine; anything else is not
                    raise KafkaError(f"could not create topic {topic}: {message} (code {code})")
        # Metadata of new topics, and their partitions' leaders, come a moment after creation
        # (also when another worker created them a moment ago).
        while True:
            counts = await _describe(admin, list(configs))
            if all(counts.get(t) for t in configs) and await _leaders_elected(
                    admin, list(configs)):
                break
            if asyncio.get_running_loop().time() > deadline:
                log.warning("topics %s: not every partition has a leader yet", list(configs))
                break
            await asyncio.sleep(0.2)
        check_input_layout({t: counts.get(t, 0) for t in settings.input_topics})
        return created, counts[settings.topic_call_ended]
    finally:
        await admin.close()


def check_input_layout(partitions: dict[str, int]) -> None:
    """The input topics must exist with one partition count, so a customer's events meet."""
    if len(set(partitions.values())) != 1 or 0 in partitions.values():
        layout = ", ".join(f"{t}={n}" for t, n in partitions.items())
        raise TopicLayoutError(
            "the input topics must all exist with the same number of partitions "
            f"(found {layout}); a customer's events must share a partition number"
        )
