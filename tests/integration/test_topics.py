from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from service.adapters.kafka_admin import TopicLayoutError, ensure_topics
from service.config import load_settings
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.integration


async def _describe(bootstrap: str, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(topics)}
    finally:
        await admin.close()


async def _cleanup_policy(bootstrap: str, topic: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [resp] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        for _, _, _, _, entries in resp.resources:
            for entry in entries:
                if entry[0] == "cleanup.policy":
                    return str(entry[1])
        return ""
    finally:
        await admin.close()


def test_creates_every_topic_once_with_the_same_partitions(stack: Stack) -> None:
    ns = stack.namespace()
    settings = load_settings({**ns.settings_env(), "CX_TOPIC_PARTITIONS": "4"})
    created = asyncio.run(ensure_topics(settings))
    assert sorted(created) == sorted(settings.input_topics + settings.output_topics)
    assert asyncio.run(ensure_topics(settings)) == []
    counts = asyncio.run(_describe(stack.kafka_bootstrap, list(created)))
    assert {counts[t] for t in settings.input_topics} == {4}
    policy = asyncio.run(_cleanup_policy(stack.kafka_bootstrap, settings.topic_contact_enriched))
    assert policy == "compact"


def test_refuses_input_topics_with_unequal_partitions(stack: Stack) -> None:
    ns = stack.namespace()
    settings = load_settings(ns.settings_env())

    async def make_odd_transfer_topic() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([
                NewTopic(settings.topic_transfer, 2, 1),
                NewTopic(settings.topic_call_ended, 3, 1),
            ])
        finally:
            await admin.close()

    asyncio.run(make_odd_transfer_topic())
    with pytest.raises(TopicLayoutError, match="same number of partitions") as raised:
        asyncio.run(ensure_topics(settings))
    assert f"{settings.topic_transfer}=2" in str(raised.value)
    assert f"{settings.topic_call_ended}=3" in str(raised.value)


def test_missing_input_topics_follow_the_existing_partition_count(stack: Stack) -> None:
    ns = stack.namespace()
    settings = load_settings(ns.settings_env())

    async def make_transfer_topic() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(settings.topic_transfer, 3, 1)])
        finally:
            await admin.close()

    asyncio.run(make_transfer_topic())
    # "Existing" means visible in the metadata, which follows the creation by a moment.
    wait_until(lambda: asyncio.run(_describe(stack.kafka_bootstrap, [settings.topic_transfer]))
               .get(settings.topic_transfer) == 3, timeout=30, what="the topic visible")
    asyncio.run(ensure_topics(settings))
    counts = asyncio.run(_describe(stack.kafka_bootstrap, list(settings.input_topics)))
    assert counts == {t: 3 for t in settings.input_topics}


def test_two_workers_creating_topics_at_once_create_each_once(stack: Stack) -> None:
    settings = load_settings(stack.namespace().settings_env())

    async def both() -> list[list[str]]:
        return list(await asyncio.gather(ensure_topics(settings), ensure_topics(settings)))

    first, second = asyncio.run(both())
    assert sorted(first + second) == sorted(settings.input_topics + settings.output_topics)


def test_created_topics_have_their_leaders_when_ensure_returns(stack: Stack) -> None:
    ns = stack.namespace()
    settings = load_settings(ns.settings_env())
    created = asyncio.run(ensure_topics(settings))
    assert settings.topic_call_ended in created

    async def leaders() -> list[int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(created)
        finally:
            await admin.close()
        return [p["leader"] for d in described for p in d["partitions"]]

    found = asyncio.run(leaders())
    assert len(found) == len(created) * settings.topic_partitions
    assert all(leader >= 0 for leader in found)
