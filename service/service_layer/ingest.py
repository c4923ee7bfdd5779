"""Applying one batch of input messages: decode, validate, store, dead-letter, count.

The worker acknowledges a batch to Kafka only after `IngestProcessor.process` returned, and
`process` returns only once every valid event is stored and every invalid one is in the
dead-letter topic. While Redis or Kafka fails it retries without end (with back-off); it never
skips a message. Cancellation (shutdown) propagates, and the batch is then not acknowledged.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import orjson

from service.adapters.codec import decode_event
from service.adapters.metrics import PipelineMetrics
from service.adapters.redis_store import EventToApply
from service.domain.events import Rejection, RejectReason

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class InputMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None


class EventStore(Protocol):
    async def apply(
        self, by_partition: Mapping[int, Sequence[EventToApply]]
    ) -> dict[int, list[bool]]: ...


class DeadLetterSink(Protocol):
    async def send(self, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        """Publish (key, value) records; return once the broker acknowledged all of them."""


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    applied: int
    duplicates: int
    invalid: int


def dead_letter_record(msg: InputMessage, rejection: Rejection, now: datetime) -> dict[str, Any]:
    """The dead-letter JSON object (schemas/dead-letter.schema.json) for one rejected message."""
    key_text: str | None = None
    if msg.key is not None:
        try:
            key_text = msg.key.decode("utf-8")
        except UnicodeDecodeError:
            key_text = None
    event_id: str | None = None
    if rejection.reason not in (RejectReason.TOO_LARGE, RejectReason.NOT_JSON) and msg.value:
        try:
            obj = orjson.loads(msg.value)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("event_id"), str):
            event_id = obj["event_id"][:128]
    return {
        "topic": msg.topic,
        "partition": msg.partition,
        "offset": msg.offset,
        "timestamp_ms": msg.timestamp_ms,
        "key": key_text,
        "key_base64": None if msg.key is None else base64.b64encode(msg.key).decode(),
        "value_base64": None if msg.value is None else base64.b64encode(msg.value).decode(),
        "reason": rejection.reason.value,
        "message": rejection.message,
        "event_id": event_id,
        "dead_lettered_at": now.astimezone(UTC).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z"
        ),
    }


class IngestProcessor:
    def __init__(
        self,
        *,
        store: EventStore,
        dead_letters: DeadLetterSink,
        metrics: PipelineMetrics,
        kind_of_topic: Callable[[str], str],
        max_event_bytes: int,
        retry_max_backoff: float,
        round_trip_seconds: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._store = store
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._kind_of_topic = kind_of_topic
        self._max_event_bytes = max_event_bytes
        self._retry_max_backoff = retry_max_backoff
        self._round_trip_seconds = round_trip_seconds
        self.healthy = {"redis": True, "kafka": True}

    async def process(self, batch: Sequence[InputMessage]) -> BatchOutcome:
        m = self._metrics
        to_apply: dict[int, list[EventToApply]] = {}
        rejected: list[tuple[InputMessage, Rejection]] = []
        for msg in batch:
            m.consumed_by_topic[msg.topic].inc()
            try:
                kind = self._kind_of_topic(msg.topic)
            except KeyError:
                rejected.append((msg, Rejection(RejectReason.UNKNOWN_TOPIC, msg.topic)))
                continue
            try:
                result = decode_event(kind, msg.value, self._max_event_bytes)
            except Exception as exc:  # a defect must not stop the partition: dead-letter it
                log.exception("could not decode %s[%d]@%d", msg.topic, msg.partition, msg.offset)
                result = Rejection(RejectReason.PROCESSING_ERROR, f"{kind}: {exc!r}"[:500])
            if isinstance(result, Rejection):
                rejected.append((msg, result))
                continue
            to_apply.setdefault(msg.partition, []).append(
                EventToApply(msg.topic, msg.offset, result.header.event_id)
            )

        applied = duplicates = 0
        if to_apply:
            flags = await self._retrying("redis", lambda: self._store.apply(to_apply))
            m.redis_round_trip.observe(self._round_trip_seconds())
            for partition, events in to_apply.items():
                for event, fresh in zip(events, flags[partition], strict=True):
                    if fresh:
                        applied += 1
                        m.applied_by_topic[event.topic].inc()
                    else:
                        duplicates += 1
                        m.duplicates_by_topic[event.topic].inc()

        if rejected:
            now = datetime.now(UTC)
            records = [
                (msg.key, orjson.dumps(dead_letter_record(msg, rejection, now)))
                for msg, rejection in rejected
            ]
            await self._retrying("kafka", lambda: self._dead_letters.send(records))
            for msg, rejection in rejected:
                m.invalid_by_topic_reason[(msg.topic, rejection.reason)].inc()
                log.debug("dead-lettered %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset,
                          rejection.message)

        m.batch_events.observe(len(batch))
        return BatchOutcome(applied, duplicates, len(rejected))

    async def _retrying(self, dependency: str, call: Callable[[], Awaitable[T]]) -> T:
        """Call until it succeeds, backing off up to the configured maximum between tries."""
        delay = 0.05
        while True:
            try:
                result = await call()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the dependency: retry, never skip
                self.healthy[dependency] = False
                self._metrics.dependency_up.labels(dependency).set(0)
                self._metrics.retries.labels(dependency).inc()
                log.warning("%s failed (%s: %s); retrying in %.2fs",
                            dependency, type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_backoff)
                continue
            if not self.healthy[dependency]:
                log.info("%s is reachable again", dependency)
                self.healthy[dependency] = True
                self._metrics.dependency_up.labels(dependency).set(1)
            return result
