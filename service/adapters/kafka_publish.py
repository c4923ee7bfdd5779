"""Publishing events to the input topics, keyed the way the contract says."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from service.adapters.connections import kafka_options, kafka_startup_failure
from service.config import Settings


def key_of(event: Mapping[str, Any]) -> bytes | None:
    """The message key: customer_id as UTF-8, or contact_id for an unidentified caller."""
    customer = event.get("customer_id")
    if isinstance(customer, str) and customer:
        return customer.encode()
    contact = event.get("contact_id")
    return contact.encode() if isinstance(contact, str) else None


class EventPublisher:
    """An idempotent aiokafka producer that waits for every send before `close` returns."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            **kafka_options(settings),
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=256 * 1024,
        )
        self._pending: set[asyncio.Future[Any]] = set()

    async def start(self) -> None:
        try:
            await self._producer.start()
        except KafkaConnectionError as exc:
            failure = await kafka_startup_failure(self._settings)
            if failure is not None:
                raise failure from exc
            raise

    async def send_event(self, topic: str, event: Mapping[str, Any]) -> None:
        await self.send_raw(topic, key_of(event), orjson.dumps(event))

    async def send_raw(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        future = await self._producer.send(topic, value=value, key=key)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        if len(self._pending) > 20_000:
            await self.flush()

    async def flush(self) -> None:
        if self._pending:
            await asyncio.gather(*list(self._pending))

    async def close(self) -> None:
        try:
            await self.flush()
        finally:
            await self._producer.stop()
