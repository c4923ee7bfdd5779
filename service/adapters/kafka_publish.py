"""Kafka producers: events published to the input topics, keyed the way the contract says
(`EventPublisher`), and the worker's outputs published through its Faust app (`KafkaOutputs`),
both on the partition Kafka's default partitioner gives a key (`partition_of`, which the HTTP
API also uses to find the partition that holds a customer)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from aiokafka.partitioner import murmur2

from service.adapters.connections import kafka_options, kafka_startup_failure
from service.adapters.failures import RecordsTooLarge, kafka_transient
from service.config import Settings


def partition_of(key: str | bytes | None, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a key among `partitions`: murmur2 of its
    bytes, as the Java client; a record without a key goes to any partition."""
    if key is None:
        return random.randrange(partitions)
    data = key.encode() if isinstance(key, str) else key
    return int((murmur2(data) & 0x7FFFFFFF) % partitions)


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


class KafkaOutputs:
    """Publishes records through the Faust app's producer and waits for the broker's acks.

    Records are grouped by topic partition (chosen as the producer's default partitioner
    would: murmur2 of the key) and handed to the producer as whole record batches: one call
    per batch, not per record."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    def is_transient(self, exc: BaseException) -> bool:
        """Whether sending again can succeed: the broker is down, slow or electing."""
        return kafka_transient(exc)

    async def send(self, records: Sequence[tuple[str, bytes | None, bytes | None]]) -> None:
        producer: Any = self._app.producer
        kafka = producer._ensure_producer()  # the aiokafka producer under Faust's
        # A record over the producer's limit is refused before anything is sent; one over the
        # topic's (broker) limit fails its batch, whose records are then sent one by one.
        limit = int(getattr(kafka, "_max_request_size", 1_048_576))
        too_large: dict[int, int] = {}
        partitions: dict[str, list[int]] = {}
        by_partition: dict[tuple[str, int], list[int]] = {}
        for index, (topic, key, value) in enumerate(records):
            size = len(value or b"") + len(key or b"")
            if size + _RECORD_OVERHEAD > limit:
                too_large[index] = size
                continue
            known = partitions.get(topic)
            if known is None:
                known = partitions[topic] = sorted(await kafka.partitions_for(topic))
            partition = known[partition_of(key, len(known))]
            by_partition.setdefault((topic, partition), []).append(index)
        pending: list[tuple[Any, list[int], str, int]] = []
        for (topic, partition), indexes in by_partition.items():
            batch = kafka.create_batch()
            in_batch: list[int] = []
            for index in indexes:
                _, key, value = records[index]
                if batch.append(key=key, value=value, timestamp=None) is not None:
                    in_batch.append(index)
                    continue
                if batch.record_count():  # full: send it, start the next one
                    pending.append((await kafka.send_batch(batch, topic, partition=partition),
                                    in_batch, topic, partition))
                    batch, in_batch = kafka.create_batch(), []
                    if batch.append(key=key, value=value, timestamp=None) is not None:
                        in_batch.append(index)
                        continue
                # larger than a batch: on its own
                pending.append((await kafka.send(topic, value, key, partition=partition),
                                [index], topic, partition))
            if batch.record_count():
                pending.append((await kafka.send_batch(batch, topic, partition=partition),
                                in_batch, topic, partition))
        results = await asyncio.gather(*(f for f, _, _, _ in pending), return_exceptions=True)
        failure: BaseException | None = None
        for (_, indexes, topic, partition), result in zip(pending, results, strict=True):
            if isinstance(result, MessageSizeTooLargeError):
                # The broker refused the batch: find which records it cannot take.
                singles = [await kafka.send(topic, records[i][2], records[i][1],
                                            partition=partition) for i in indexes]
                for index, single in zip(indexes, await asyncio.gather(
                        *singles, return_exceptions=True), strict=True):
                    if isinstance(single, MessageSizeTooLargeError):
                        too_large[index] = (len(records[index][2] or b"")
                                            + len(records[index][1] or b""))
                    elif isinstance(single, BaseException):
                        failure = single
            elif isinstance(result, BaseException):
                failure = result
        if failure is not None:
            raise failure
        if too_large:
            raise RecordsTooLarge(too_large, limit)


# Bytes a record adds to its key and value in a request (headers, lengths, batch header).
_RECORD_OVERHEAD = 512
