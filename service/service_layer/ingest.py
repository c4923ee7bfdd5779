"""Applying one batch of input messages: decode, validate, fold, store, publish, count.

For each input partition in the batch: read its clock, the states of the customers in the
batch and the timers that fall due; fold the events into the states; settle every touched or
due customer at the new watermark; then write states, counter deltas, timers, clock and the
outbox of outputs in one atomic script per partition. Outputs are published to Kafka from the
outbox (so a crash between the commit and the publish loses nothing), then the outbox is
trimmed. The worker acknowledges the batch to Kafka only after `process` returned.

While Redis or Kafka fails, `process` retries without end (with back-off) and never skips a
message. Cancellation (shutdown) propagates, and the batch is then not acknowledged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol, TypeVar

import orjson
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from redis.exceptions import RedisError
from redis.exceptions import ResponseError as RedisResponseError

from service.adapters.codec import decode_event
from service.adapters.metrics import PipelineMetrics
from service.adapters.redis_state import (
    Conflict,
    PartitionClock,
    PartitionCommit,
    PartitionData,
    RedisState,
    UndecodableState,
    encode_state,
    outbox_item,
    parse_outbox_item,
)
from service.domain import watermark as clocks
from service.domain.cardinality import LabelCaps
from service.domain.counters import BucketKey, expand, merge_counts
from service.domain.engine import (
    Settled,
    alert_payload,
    apply_event,
    held_apart,
    is_too_late,
    new_state,
    overflows,
    settle,
    state_key,
)
from service.domain.events import (
    ContactEvent,
    Rejection,
    RejectReason,
    SurveyAnswered,
    Transfer,
)
from service.domain.policy import Policy
from service.domain.records import CustomerState
from service.domain.validation import DoorLimits, check_record
from service.service_layer.state_cache import StateCache
from service.service_layer.suppression import Suppression

log = logging.getLogger(__name__)
T = TypeVar("T")
TOO_LATE = RejectReason.TOO_LATE.value
PROCESSING_ERROR = RejectReason.PROCESSING_ERROR.value
DEAD_LETTER_MAX_COPY = 64 * 1024  # CX_DEAD_LETTER_MAX_COPY
_MESSAGE_MAX = 2000  # characters of a dead letter's message


@dataclass(frozen=True, slots=True)
class InputMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None
    redriven: bool = False  # sent back from the dead-letter topic (`cx-stream redrive`)


class ProcessingDefect(Exception):
    """A failure that retrying cannot cure (a bug, a state it cannot read). The worker stops
    without acknowledging the batch, so Kafka delivers it again after the fix or restart."""


_TRANSIENT_REPLIES = ("LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "READONLY",
                      "NOREPLICAS", "MOVED", "ASK")


def is_transient(exc: BaseException) -> bool:
    """Whether waiting and trying again can succeed: the dependency is down, slow or busy."""
    if isinstance(exc, RedisResponseError):
        return str(exc).split(" ", 1)[0] in _TRANSIENT_REPLIES
    return isinstance(exc, RedisError | KafkaError | ProducerSendError | OSError | TimeoutError
                      | Conflict)


class RecordsTooLarge(Exception):
    """Some records are over the size Kafka accepts: sending them again cannot succeed. The
    others of the call were published."""

    def __init__(self, sizes: Mapping[int, int], limit: int) -> None:
        super().__init__(f"{len(sizes)} record(s) over the limit of {limit} bytes")
        self.sizes = dict(sizes)  # index in the records sent -> bytes
        self.limit = limit


class OutputSink(Protocol):
    async def send(self, records: Sequence[tuple[str, bytes | None, bytes | None]]) -> None:
        """Publish (topic, key, value) records (a None value: a tombstone); return once the
        broker acknowledged them. Raise RecordsTooLarge, after publishing the others, for
        records Kafka refuses as too large."""


@dataclass(frozen=True, slots=True)
class Topics:
    dead_letter: str
    contact_enriched: str
    customer_alerts: str


@dataclass
class BatchOutcome:
    applied: int = 0
    duplicates: int = 0
    invalid: int = 0
    too_late: int = 0
    quarantined: int = 0  # dead-lettered as processing_error while applying the batch
    updates: int = 0
    alerts: int = 0
    suppressed: int = 0  # events of erased customers, dropped


def dead_letter_record(msg: InputMessage, reason: str, message: str, now: datetime,
                       max_copy: int = DEAD_LETTER_MAX_COPY) -> dict[str, Any]:
    """The dead-letter JSON object (schemas/dead-letter.schema.json) for one message. The
    copies of a value or key longer than `max_copy` bytes are cut there (`truncated`), with
    their full length and SHA-256, so that the record always fits the topic."""
    key_text: str | None = None
    key_copy = value_copy = None
    if msg.key is not None:
        key_copy = msg.key[:max_copy]
        try:
            msg.key.decode("utf-8")
            key_text = key_copy.decode("utf-8", "ignore")  # a cut may split a character
        except UnicodeDecodeError:
            key_text = None
    if msg.value is not None:
        value_copy = msg.value[:max_copy]
    event_id: str | None = None
    if reason not in (RejectReason.TOO_LARGE, RejectReason.NOT_JSON) and msg.value:
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
        "key_base64": None if key_copy is None else base64.b64encode(key_copy).decode(),
        "value_base64": None if value_copy is None else base64.b64encode(value_copy).decode(),
        "reason": reason,
        "message": message[:_MESSAGE_MAX],
        "event_id": event_id,
        "dead_lettered_at": _now_text(now),
        "redriven": msg.redriven,
        "truncated": (msg.key is not None and len(msg.key) > max_copy)
        or (msg.value is not None and len(msg.value) > max_copy),
        "key_bytes": None if msg.key is None else len(msg.key),
        "key_sha256": None if msg.key is None else hashlib.sha256(msg.key).hexdigest(),
        "value_bytes": None if msg.value is None else len(msg.value),
        "value_sha256": None if msg.value is None else hashlib.sha256(msg.value).hexdigest(),
    }


def dead_letter_key(msg: InputMessage, max_copy: int = DEAD_LETTER_MAX_COPY) -> bytes | None:
    """The Kafka key of a message's dead letter: the original key (cut as its copy is)."""
    return None if msg.key is None else msg.key[:max_copy]


def output_stub(topic: str, key: bytes | None, value: bytes, limit: int, now: datetime,
                dead_letter_topic: str) -> bytes:
    """A small dead letter standing for a record Kafka refused as too large: for a dead letter
    its copies are left out; for an enriched contact or an alert, it names the record."""
    size = len(value) + len(key or b"")
    note = f"the record of {size} bytes is over the limit of {limit} bytes"
    if topic == dead_letter_topic:
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            record.update(key=None, key_base64=None, value_base64=None, truncated=True,
                          message=f"{record.get('message', '')} ({note}: copies left out)"
                          [:_MESSAGE_MAX])
            return orjson.dumps(record)
    key_text = None if key is None else key[:1024].decode("utf-8", "replace")
    return orjson.dumps({
        "topic": topic, "partition": None, "offset": None, "timestamp_ms": None,
        "key": key_text, "key_base64": None, "value_base64": None,
        "reason": PROCESSING_ERROR, "message": f"{topic}: {note}; not published",
        "event_id": None, "dead_lettered_at": _now_text(now), "truncated": True,
        "key_bytes": None if key is None else len(key),
        "key_sha256": None if key is None else hashlib.sha256(key).hexdigest(),
        "value_bytes": len(value), "value_sha256": hashlib.sha256(value).hexdigest(),
    })


def _key_text(key: bytes | None) -> str | None:
    """A message key as text (the customer id, by the contract), None when it is not UTF-8."""
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _now_text(now: datetime) -> str:
    return now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Plan:
    commit: PartitionCommit
    outcome: BatchOutcome
    per_topic: dict[str, list[int]] = field(default_factory=dict)  # applied, dup, late
    # (topic, reason) of the events dead-lettered while folding (too late, quarantined)
    late: list[tuple[str, str]] = field(default_factory=list)
    watermark: float | None = None
    # (kind, labels, count) of what was published: first sightings, repeats, corrections
    published: list[tuple[str, tuple[str, str, str], int]] = field(default_factory=list)
    # The outbox items of `commit`, not encoded: (kind, key, version, value)
    outputs: list[tuple[str, str | None, int, bytes]] = field(default_factory=list)
    # Count vectors of the settled contacts; hash fields of `commit.counters` once at the end
    counts: dict[BucketKey, list[int]] = field(default_factory=dict)
    # Due states (no event of the batch) that could not be decoded or settled: their timers
    # are dropped, the states left as stored, and not kept in memory.
    state_errors: list[str] = field(default_factory=list)

    def emit(self, kind: str, key: str | None, version: int, value: bytes) -> None:
        self.commit.outbox.append(outbox_item(kind, key, version, value))
        self.outputs.append((kind, key, version, value))


@dataclass
class _Fold:
    """A partition's events applied to their states, before settling."""

    plan: _Plan
    offsets: dict[str, int]
    newest: dict[str, float]
    applied: dict[str, int]
    states: dict[str, CustomerState] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)
    watermark: float | None = None


class IngestProcessor:
    def __init__(
        self,
        *,
        state: RedisState,
        sink: OutputSink,
        topics: Topics,
        metrics: PipelineMetrics,
        policy: Policy,
        topic_kinds: Mapping[str, str],
        max_event_bytes: int,
        retry_max_backoff: float,
        lagging: Callable[[str, int, int | None], bool] = lambda t, p, o: False,
        input_topics: Sequence[str] = (),
        cache: StateCache | None = None,
        dead_letter_max_copy: int = DEAD_LETTER_MAX_COPY,
        door: DoorLimits = DoorLimits(),  # noqa: B008 - frozen, shared safely
        caps: LabelCaps | None = None,
        max_contacts: int = 0,
        suppression: Suppression | None = None,
    ) -> None:
        self._state = state
        self._sink = sink
        self._topics = topics
        self._metrics = metrics
        self._policy = policy
        self._topic_kinds = topic_kinds
        self._max_event_bytes = max_event_bytes
        self._retry_max_backoff = retry_max_backoff
        self._lagging = lagging
        self._input_topics = tuple(input_topics)
        self._cache = cache
        self._max_copy = dead_letter_max_copy
        self._door = door
        self._caps = caps
        self._max_contacts = max_contacts
        self._suppression = suppression
        self.healthy = {"redis": True, "kafka": True}

    # -- the batch --------------------------------------------------------------------------

    async def process(self, batch: Sequence[InputMessage]) -> BatchOutcome:
        m = self._metrics
        valid: dict[int, list[tuple[InputMessage, ContactEvent]]] = {}
        rejected: list[tuple[InputMessage, Rejection]] = []
        consumed: dict[str, int] = {}
        # Events of erased customers: dropped, only their offsets are recorded as read.
        suppressed: dict[int, list[InputMessage]] = {}
        suppression = self._suppression
        if suppression is not None and not suppression.loaded:
            await self._retrying("redis", suppression.load)
        erased = suppression.erased if suppression is not None and len(suppression) else None
        for msg in batch:
            consumed[msg.topic] = consumed.get(msg.topic, 0) + 1
            result = self._decode(msg)
            if isinstance(result, Rejection):
                if erased is not None and erased(_key_text(msg.key)):
                    suppressed.setdefault(msg.partition, []).append(msg)  # not dead-lettered:
                    valid.setdefault(msg.partition, [])  # that would copy the erased id
                else:
                    rejected.append((msg, result))
            elif erased is not None and erased(result.header.customer_id):
                suppressed.setdefault(msg.partition, []).append(msg)
                valid.setdefault(msg.partition, [])  # its clock records the offset
            else:
                valid.setdefault(msg.partition, []).append((msg, result))

        for topic, n in consumed.items():
            m.consumed_by_topic[topic].inc(n)
        outcome = BatchOutcome(invalid=len(rejected))
        if rejected:
            now = datetime.now(UTC)
            records = [
                (self._topics.dead_letter, dead_letter_key(msg, self._max_copy), orjson.dumps(
                    dead_letter_record(msg, r.reason.value, r.message, now, self._max_copy)))
                for msg, r in rejected
            ]
            await self._send(records)
            for msg, r in rejected:
                m.invalid_by_topic_reason[(msg.topic, r.reason.value)].inc()
        if valid:
            plans, skipped = await self._apply(valid, suppressed)
            self._observe(valid, plans, skipped)
            for plan in plans.values():
                for name in ("applied", "duplicates", "too_late", "quarantined", "updates",
                             "alerts"):
                    setattr(outcome, name, getattr(outcome, name) + getattr(plan.outcome, name))
                for topic, (applied, dups, _late) in plan.per_topic.items():
                    m.applied_by_topic[topic].inc(applied)
                    m.duplicates_by_topic[topic].inc(dups)
                for topic, reason in plan.late:
                    m.invalid_by_topic_reason[(topic, reason)].inc()
                if plan.state_errors:
                    m.state_errors.inc(len(plan.state_errors))
        for msgs in suppressed.values():
            outcome.suppressed += len(msgs)
            for msg in msgs:
                m.suppressed_by_topic[msg.topic].inc()
        if self._cache is not None:
            m.state_cache_bytes.set(self._cache.bytes)
        for seconds in self._state.round_trips:
            m.redis_round_trip.observe(seconds)
        self._state.round_trips.clear()
        m.batch_events.observe(len(batch))
        return outcome

    def _observe(self, valid: dict[int, list[tuple[InputMessage, ContactEvent]]],
                 plans: dict[int, _Plan], skipped: Mapping[int, Mapping[tuple[str, int], str]]
                 ) -> None:
        """Latencies of this batch, and the business counters of what it published (the
        events `skipped` were quarantined, not applied)."""
        m = self._metrics
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
        queue_of = self._caps.queue.label if self._caps is not None else str
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

    def _decode(self, msg: InputMessage) -> ContactEvent | Rejection:
        kind = self._topic_kinds.get(msg.topic)
        if kind is None:
            return Rejection(RejectReason.UNKNOWN_TOPIC, msg.topic)
        try:
            event = decode_event(kind, msg.value, self._max_event_bytes, self._door.max_depth)
            if isinstance(event, Rejection):
                return event
            return check_record(event, msg.key, msg.timestamp_ms, self._door) or event
        except Exception as exc:  # a defect must not stop the partition: dead-letter it
            log.exception("could not decode %s[%d]@%d", msg.topic, msg.partition, msg.offset)
            return Rejection(RejectReason.PROCESSING_ERROR, f"{kind}: {exc!r}"[:500])

    async def _apply(self, valid: dict[int, list[tuple[InputMessage, ContactEvent]]],
                     suppressed: dict[int, list[InputMessage]]
                     ) -> tuple[dict[int, _Plan], dict[int, dict[tuple[str, int], str]]]:
        """Commit, publish and trim the outbox; the plans and the events quarantined."""
        skipped: dict[int, dict[tuple[str, int], str]] = {}
        try:
            plans, leftovers = await self._retrying(
                "redis", lambda: self._commit(valid, suppressed))
        except ProcessingDefect as defect:
            plans, leftovers = await self._quarantine(valid, suppressed, defect, skipped)
        records, published, contacts, gone = self._outbox_records(plans, leftovers)
        if records:
            await self._send(records)
        await self._retrying("redis", lambda: self._state.finish_outbox(published, contacts,
                                                                        erased=gone))
        return plans, skipped

    async def _send(self, records: Sequence[tuple[str, bytes | None, bytes | None]]) -> None:
        """Publish, retrying while Kafka fails; a record Kafka refuses as too large is replaced
        by a small dead letter (sending it again could never succeed)."""
        try:
            await self._retrying("kafka", lambda: self._sink.send(records))
        except ProcessingDefect as defect:
            refused = defect.__cause__
            if not isinstance(refused, RecordsTooLarge):
                raise
            now = datetime.now(UTC)
            stubs: list[tuple[str, bytes | None, bytes | None]] = []
            for index, size in sorted(refused.sizes.items()):
                topic, key, value = records[index]
                log.error("%s: a record of %d bytes (key %r) is over Kafka's limit of %d bytes; "
                          "a dead letter stands for it", topic, size,
                          None if key is None else key[:80], refused.limit)
                self._metrics.outputs_too_large.labels(topic).inc()
                stubs.append((self._topics.dead_letter, None if key is None else key[:1024],
                              output_stub(topic, key, value or b"", refused.limit, now,
                                          self._topics.dead_letter)))
            await self._retrying("kafka", lambda: self._sink.send(stubs))

    # -- quarantine: a batch that fails for a reason of its own ----------------------------

    async def _quarantine(self, valid: dict[int, list[tuple[InputMessage, ContactEvent]]],
                          suppressed: dict[int, list[InputMessage]], defect: ProcessingDefect,
                          skip: dict[int, dict[tuple[str, int], str]]
                          ) -> tuple[dict[int, _Plan], dict[int, list[bytes]]]:
        """Applying the batch raised something retrying cannot cure: find the events that cause
        it, dead-letter exactly those (`processing_error`) and apply the others. Work done only
        when a batch failed. When no event causes it (the failure comes again without them),
        the defect propagates: the worker stops and its restart is the cure. `skip` receives
        the quarantined events: per partition, (topic, offset) -> why."""
        log.error("a batch of %d events cannot be applied (%s); looking for the events that "
                  "cause it", sum(map(len, valid.values())), defect)
        for partition, items in valid.items():
            found = await self._retrying("redis", partial(self._culprits, partition, items))
            if found:
                skip[partition] = found
        if not skip:
            log.error("no event of the batch causes the failure")
            raise defect
        for partition, found in skip.items():
            for (topic, offset), message in found.items():
                log.error("%s[%d]@%d: dead-lettered as processing_error: %s", topic, partition,
                          offset, message)
        return await self._retrying("redis", lambda: self._commit(valid, suppressed, skip))

    async def _culprits(self, partition: int, items: list[tuple[InputMessage, ContactEvent]]
                        ) -> dict[tuple[str, int], str]:
        """The events of one partition that make it fail: (topic, offset) -> why. Customers
        are tried in halves (bisection), then the events of each failing customer."""
        if await self._trial(partition, items, []) is not None:
            return {}  # fails even without its events: not tied to them
        groups: dict[str, list[int]] = {}
        for index, (_, event) in enumerate(items):
            groups.setdefault(state_key(event), []).append(index)
        kept: list[int] = []
        bad_groups = await self._bisect(partition, items, kept, list(groups.values()))
        culprits: dict[int, BaseException] = {}
        for group, exc in bad_groups:
            key = state_key(items[group[0]][1])
            if len(group) == 1 or (isinstance(exc, UndecodableState) and exc.key == key):
                culprits.update(dict.fromkeys(group, exc))  # every event of that customer
                continue
            for (index,), event_exc in await self._bisect(partition, items, kept,
                                                           [[i] for i in group]):
                culprits[index] = event_exc
        out: dict[tuple[str, int], str] = {}
        for index, exc in sorted(culprits.items()):
            msg = items[index][0]
            log.error("%s[%d]@%d cannot be applied", msg.topic, partition, msg.offset,
                      exc_info=exc)
            out[(msg.topic, msg.offset)] = (
                f"{self._topic_kinds.get(msg.topic, msg.topic)}: {type(exc).__name__}: {exc}")
        return out

    async def _bisect(self, partition: int, items: list[tuple[InputMessage, ContactEvent]],
                      kept: list[int], units: list[list[int]]
                      ) -> list[tuple[list[int], BaseException]]:
        """The units (lists of indexes into `items`) that fail when tried on top of `kept`:
        a chunk that passes joins `kept` (extended in place), a failing one is split in two.
        `kept` passes at every step, so what it holds at the end passes together."""
        bad: list[tuple[list[int], BaseException]] = []

        async def visit(chunk: list[list[int]]) -> None:
            flat = [i for unit in chunk for i in unit]
            exc = await self._trial(partition, items, sorted(kept + flat))
            if exc is None:
                kept.extend(flat)
            elif len(chunk) == 1:
                bad.append((chunk[0], exc))
            else:
                half = len(chunk) // 2
                await visit(chunk[:half])
                await visit(chunk[half:])

        if units:
            await visit(units)
        return bad

    async def _trial(self, partition: int, items: list[tuple[InputMessage, ContactEvent]],
                     indexes: list[int]) -> BaseException | None:
        """Plan the partition with only these events (in batch order) and encode what the commit
        would write, without writing: the exception it raises, if any. States are read from
        Redis (the partition's held states were dropped when the batch failed)."""
        try:
            plans, _ = await self._plan({partition: [items[i] for i in indexes]}, {})
            for state in plans[partition].commit.states.values():
                if state is not None:
                    encode_state(state)
        except Exception as exc:
            if is_transient(exc):
                raise
            return exc
        return None

    async def _commit(self, valid: dict[int, list[tuple[InputMessage, ContactEvent]]],
                      suppressed: dict[int, list[InputMessage]] | None = None,
                      skip: Mapping[int, Mapping[tuple[str, int], str]] | None = None,
                      ) -> tuple[dict[int, _Plan], dict[int, list[bytes]]]:
        """Read, fold, commit; on a write conflict read again and redo those partitions.
        `skip`: per partition, (topic, offset) of events to dead-letter as processing_error."""
        pending = dict(valid)
        suppressed = {} if suppressed is None else suppressed
        done: dict[int, _Plan] = {}
        leftovers: dict[int, list[bytes]] = {}
        cache = self._cache
        try:
            for attempt in range(20):
                plans, outboxes = await self._plan(pending, suppressed, skip)
                written_at = time.monotonic()
                commits = {p: plan.commit for p, plan in plans.items()}
                conflicts = await self._state.commit(commits)
                for partition, plan in plans.items():
                    if partition not in conflicts:
                        done[partition] = plan
                        leftovers[partition] = outboxes[partition]
                        c = plan.commit
                        if cache is not None and c.committed_seq is not None:
                            cache.committed(partition, c.committed_seq, c.states, c.sizes,
                                            written_at)
                            if plan.state_errors:  # settle may have changed them in memory
                                cache.discard(partition, plan.state_errors)
                if not conflicts:
                    return done, leftovers
                if cache is not None:
                    cache.drop(conflicts)  # the fold changed the states it held
                log.warning("partitions %s were written by another worker; redoing them",
                            sorted(conflicts))
                pending = {p: valid[p] for p in conflicts}
                await asyncio.sleep(min(0.05 * 2 ** attempt, 2.0))
        except BaseException:
            # The fold mutates states in place: after a failed batch, those held in memory
            # may differ from Redis. The retry reads them again.
            if cache is not None:
                cache.drop(valid)
            raise
        raise Conflict(f"partitions {sorted(pending)} kept changing under this worker")

    async def _plan(self, valid: dict[int, list[tuple[InputMessage, ContactEvent]]],
                    suppressed: dict[int, list[InputMessage]],
                    skip: Mapping[int, Mapping[tuple[str, int], str]] | None = None,
                    ) -> tuple[dict[int, _Plan], dict[int, list[bytes]]]:
        """Fold the events into their states, read the timers that fall due at the new
        watermarks (and their states), then settle every touched or due state."""
        cache = self._cache
        wanted: dict[int, list[str]] = {}
        held: dict[int, dict[str, CustomerState]] = {}
        for p, items in valid.items():
            keys = list(dict.fromkeys([state_key(e) for _, e in items]))
            held[p] = cache.take(p, keys) if cache is not None else {}
            wanted[p] = [k for k in keys if k not in held[p]] if held[p] else keys
        data = await self._state.load(wanted)
        if self._suppression is not None:
            await self._recheck(valid, data, suppressed)
        current: set[int] = set()  # partitions whose held states are what Redis holds
        if cache is not None:
            stale: dict[int, list[str]] = {}
            for p in valid:
                if cache.valid(p, data[p].clock):
                    current.add(p)
                    data[p].held = held[p]
                elif held[p]:  # another writer since this worker's last commit: read them
                    stale[p] = list(held[p])
            if stale:
                for partition, raw in (await self._state.load_states(stale)).items():
                    data[partition].states.update(raw)
            found = sum(len(data[p].held) for p in current)
            self._metrics.state_reads_memory.inc(found)
            self._metrics.state_reads_redis.inc(sum(map(len, held.values())) - found
                                                + sum(map(len, wanted.values())))
        if self._max_contacts > 0:
            await self._read_held_apart(valid, data)
        folds = {p: self._fold_partition(p, valid[p], data[p], skip.get(p) if skip else None,
                                         suppressed.get(p, ()))
                 for p in valid}
        await self._read_due(data, {p: f.watermark for p, f in folds.items()}, current)
        plans = {p: self._settle_partition(folds[p], data[p]) for p in valid}
        return plans, {p: data[p].outbox for p in valid}

    async def _read_held_apart(self, valid: dict[int, list[tuple[InputMessage, ContactEvent]]],
                               data: dict[int, PartitionData]) -> None:
        """Read the states of contacts that may be held apart from a noisy customer in this
        batch (engine.overflows): those of customers that are noisy, or could become so."""
        limit = self._max_contacts
        missing: dict[int, list[str]] = {}
        for p, items in valid.items():
            d = data[p]
            new_contacts: dict[str, set[str]] = {}
            for _, event in items:
                if event.header.customer_id is not None:
                    new_contacts.setdefault(state_key(event), set()).add(event.header.contact_id)
            for key, contacts in new_contacts.items():
                state = d.held.get(key)
                if state is None:
                    raw = d.states.get(key)
                    # A stored contact takes more than 100 bytes of JSON: a state this small
                    # cannot overflow in this batch, and is not decoded here.
                    if (0 if raw is None else len(raw) // 100) + len(contacts) <= limit:
                        continue
                    state = d.state(key)
                    if state is not None:
                        d.held[key] = state  # decoded once: the fold takes it from here
                known = state.contacts if state is not None else {}
                noisy = state is not None and state.noisy
                fresh = [c for c in contacts if c not in known]
                if noisy or len(known) + len(fresh) > limit:
                    missing.setdefault(p, []).extend(
                        k for k in (f"u:{c}" for c in fresh) if not d.has(k))
        if missing:
            for partition, raw_states in (await self._state.load_states(missing)).items():
                data[partition].states.update(raw_states)

    async def _read_due(self, data: dict[int, PartitionData],
                        marks: Mapping[int, float | None], current: set[int]) -> None:
        """Read the timers due before each partition's watermark and the states they name
        that are not read yet (`current`: partitions whose held states may be used)."""
        # The first read brings only the earliest timers; when all of them fell due at the
        # new watermark there may be more: read every due one.
        more_due: dict[int, float] = {}
        for p, wm in marks.items():
            d = data[p]
            if (wm is not None and d.due and len(d.due) >= self._state.timers_per_batch
                    and d.due[-1][1] < wm and (d.due_until is None or wm > d.due_until)):
                more_due[p] = wm
        if more_due:
            for partition, due in (await self._state.due_timers(more_due)).items():
                data[partition].due = due
                data[partition].due_until = more_due[partition]
        # Timers that fell due need their states: from memory when this worker holds them.
        cache = self._cache
        missing: dict[int, list[str]] = {}
        for p, wm in marks.items():
            if wm is None:
                continue
            d = data[p]
            keys = [m for m, at in d.due if at < wm and not d.has(m)]
            if keys and cache is not None and p in current:
                found = cache.take(p, keys)
                d.held.update(found)
                keys = [k for k in keys if k not in found]
            if keys:
                missing[p] = keys
        if missing:
            more = await self._state.load_states(missing)
            for partition, states in more.items():
                data[partition].states.update(states)

    async def _recheck(self, valid: dict[int, list[tuple[InputMessage, ContactEvent]]],
                       data: Mapping[int, PartitionData],
                       suppressed: dict[int, list[InputMessage]]) -> None:
        """When a clock shows an erasure newer than the suppression list this batch was
        checked against: read the list again and drop the events it now names."""
        suppression = self._suppression
        assert suppression is not None
        newest = max((data[p].clock.erasures for p in valid), default=0)
        if newest <= suppression.generation:
            return
        await suppression.load()
        for partition, items in valid.items():
            kept = []
            for msg, event in items:
                if suppression.erased(event.header.customer_id):
                    suppressed.setdefault(partition, []).append(msg)
                else:
                    kept.append((msg, event))
            items[:] = kept  # the batch's own list: a redo and the metrics see it too

    def _fold_partition(self, partition: int, items: list[tuple[InputMessage, ContactEvent]],
                        data: PartitionData,
                        skip: Mapping[tuple[str, int], str] | None = None,
                        dropped: Sequence[InputMessage] = ()) -> _Fold:
        """Apply the partition's events to their states; the new watermark. The events named
        in `skip` (quarantined) are dead-lettered as processing_error instead; those in
        `dropped` (of erased customers) are only recorded as read."""
        clock = data.clock
        policy = self._policy
        outcome = BatchOutcome()
        plan = _Plan(PartitionCommit(clock.seq, {}, {}, {}, [], {}, [],
                                     writer="" if self._cache is None else self._cache.token),
                     outcome)
        fold = _Fold(plan, dict(clock.offsets), dict(clock.newest), dict(clock.applied))
        states = fold.states
        touched = fold.touched
        offsets = fold.offsets
        newest = fold.newest
        applied_counts = fold.applied
        per_topic = plan.per_topic
        watermark = clock.watermark
        now: datetime | None = None
        for msg, event in items:
            topic = msg.topic
            counts = per_topic.get(topic)
            if counts is None:
                counts = per_topic[topic] = [0, 0, 0]
            last = offsets.get(topic)
            if last is not None and msg.offset <= last:
                counts[1] += 1  # applied before a restart: Kafka delivered it again
                outcome.duplicates += 1
                continue
            offsets[topic] = msg.offset
            if skip and (topic, msg.offset) in skip:
                outcome.quarantined += 1
                plan.late.append((topic, PROCESSING_ERROR))
                now = now or datetime.now(UTC)
                record = dead_letter_record(msg, PROCESSING_ERROR, skip[(topic, msg.offset)],
                                            now, self._max_copy)
                plan.emit("dead", self._dead_key(msg), 0, orjson.dumps(record))
                continue
            t = event.header.occurred_at.timestamp()
            if is_too_late(event, watermark, policy):
                counts[2] += 1
                outcome.too_late += 1
                plan.late.append((topic, TOO_LATE))
                now = now or datetime.now(UTC)
                record = dead_letter_record(
                    msg, TOO_LATE,
                    f"{self._topic_kinds[topic]}.occurred_at: older than the watermark "
                    f"minus the allowed lateness ({_now_text(datetime.fromtimestamp(t, UTC))})",
                    now, self._max_copy)
                plan.emit("dead", self._dead_key(msg), 0, orjson.dumps(record))
                continue
            seen = newest.get(topic)
            if seen is None or t > seen:
                newest[topic] = t
            key = state_key(event)
            state = states.get(key)
            if state is None:
                state = data.state(key) or new_state(event)
                states[key] = state
            if overflows(state, event, self._max_contacts):
                if not state.noisy:
                    state.noisy = True
                    touched.add(key)
                    increments = plan.commit.clock_increments
                    increments["noisy"] = increments.get("noisy", 0) + 1
                key, fresh = held_apart(event)
                state = states.get(key) or data.state(key) or fresh
                states[key] = state
            if apply_event(state, event):
                counts[0] += 1
                outcome.applied += 1
                applied_counts[topic] = applied_counts.get(topic, 0) + 1
                touched.add(key)
            else:
                counts[1] += 1
                outcome.duplicates += 1
        for msg in dropped:  # read and dropped: the partition is not behind because of them
            last = offsets.get(msg.topic)
            if last is None or msg.offset > last:
                offsets[msg.topic] = msg.offset
        lagging = [t for t in self._input_topics
                   if self._lagging(t, partition, offsets.get(t))]
        fold.watermark = plan.watermark = clocks.advance(watermark, newest, lagging)
        return fold

    def _dead_key(self, msg: InputMessage) -> str | None:
        key = dead_letter_key(msg, self._max_copy)
        return key.decode("utf-8", "replace") if key else None

    def _settle_partition(self, fold: _Fold, data: PartitionData) -> _Plan:
        """Settle the touched states and those whose timers fell due; the partition's commit."""
        plan = fold.plan
        states = fold.states
        touched = fold.touched
        watermark = fold.watermark
        timers_only: set[str] = set()  # touched by no event of the batch
        for member, due_at in data.due:
            if watermark is None or due_at >= watermark:
                break  # timers come sorted by due time
            if member not in states:
                if not data.has(member):
                    continue  # not read (cannot happen: _read_due read every due one)
                try:
                    loaded = data.state(member)
                except UndecodableState as exc:
                    # No event of the batch is tied to it: drop its timer (its events are
                    # dead-lettered when they come) and leave the value for inspection.
                    log.error("%s; its timer is dropped", exc)
                    plan.state_errors.append(member)
                    plan.commit.timers_remove.append(member)
                    continue
                if loaded is None:  # expired meanwhile
                    plan.commit.timers_remove.append(member)
                    continue
                states[member] = loaded
            if member not in touched:
                timers_only.add(member)
            touched.add(member)
        for key in touched:
            if watermark is not None:
                if key not in timers_only:
                    self._settle(key, states[key], watermark, plan)
                    continue
                try:
                    self._settle(key, states[key], watermark, plan)
                except Exception:
                    # No event of the batch is tied to it: drop its timer and leave the state
                    # as stored (its events are dead-lettered when they come).
                    log.exception("the stored state %r cannot be settled; its timer is "
                                  "dropped", key)
                    plan.state_errors.append(key)
                    plan.commit.timers_remove.append(key)
            else:
                # No watermark yet (a lagging topic of this partition was not read): keep the
                # state and settle it as soon as there is one.
                plan.commit.states[key] = states[key]
                plan.commit.timers_add[key] = float("-inf")
        fields: dict[str, str] = {}
        if watermark is not None:
            fields["wm"] = repr(watermark)
        for topic, t in fold.newest.items():
            fields[f"m:{topic}"] = repr(t)
        for topic, offset in fold.offsets.items():
            fields[f"o:{topic}"] = str(offset)
        for topic, n in fold.applied.items():
            fields[f"n:{topic}"] = str(n)
        plan.commit.clock_fields = fields
        plan.commit.counters = expand(plan.counts)
        return plan

    def _settle(self, key: str, state: CustomerState, watermark: float, plan: _Plan) -> None:
        settled: Settled = settle(state, watermark, self._policy, self._caps)
        # Everything that can raise comes before the plan changes: a state that fails here
        # leaves the plan as it was (_settle_partition).
        views = [orjson.dumps(update.view) for update in settled.updates]
        alerts = [orjson.dumps(alert_payload(alert)) for alert in settled.alerts]
        commit = plan.commit
        if state.noisy and (settled.forget or len(state.contacts) < self._max_contacts):
            state.noisy = False  # back under the limit: its new contacts are its own again
            commit.clock_increments["noisy"] = commit.clock_increments.get("noisy", 0) - 1
        merge_counts(plan.counts, settled.counts)
        for update, encoded in zip(settled.updates, views, strict=True):
            view = update.view
            labels = (view["queue"], view["channel"], view["outcome"])
            if update.version == 1:
                plan.published.append(("contact", labels, 1))
                if view["is_repeat"]:
                    plan.published.append(("repeat", labels, 1))
            else:
                plan.published.append(("correction", labels, 1))
            plan.emit("contact", update.contact_id, update.version, encoded)
        for name, delta in zip(("surveys_joined", "surveys", "transfers_joined", "transfers"),
                               settled.joins, strict=True):
            if delta:
                commit.clock_increments[name] = commit.clock_increments.get(name, 0) + delta
        if settled.band_change is not None:
            old, new = settled.band_change
            for band, delta in ((old, -1), (new, 1)):
                if band is not None:
                    name = f"band:{band}"
                    commit.clock_increments[name] = commit.clock_increments.get(name, 0) + delta
        for alert, payload in zip(settled.alerts, alerts, strict=True):
            delta = 1 if alert.alert == "at_risk_entered" else -1
            commit.clock_increments["at_risk"] = commit.clock_increments.get("at_risk", 0) + delta
            plan.emit("alert", alert.customer_id, alert.version, payload)
        plan.outcome.updates += len(settled.updates)
        plan.outcome.alerts += len(settled.alerts)
        if settled.forget:
            commit.states[key] = None
            commit.timers_remove.append(key)
        else:
            commit.states[key] = state
            if settled.next_due is not None:
                commit.timers_add[key] = settled.next_due
            else:  # idle: kept until CX_STATE_IDLE_TTL, nothing left to settle
                commit.timers_remove.append(key)

    def _outbox_records(
        self, plans: dict[int, _Plan], leftovers: dict[int, list[bytes]]
    ) -> tuple[list[tuple[str, bytes | None, bytes | None]], dict[int, int],
               list[tuple[str, int, bytes]], list[str]]:
        """Kafka records for the outbox items (left over from before, then this batch's),
        how many items to trim per partition, the contact views to store and those to delete
        (contacts of erased customers: `cx-stream erase` leaves a tombstone item)."""
        records: list[tuple[str, bytes | None, bytes | None]] = []
        contacts: dict[str, tuple[int, bytes]] = {}
        gone: set[str] = set()
        published: dict[int, int] = {}
        for partition, plan in plans.items():
            earlier = leftovers.get(partition, [])
            published[partition] = len(earlier) + len(plan.outputs)
            # This batch's items are at hand; only those left over are parsed from Redis.
            for kind, name, version, value in [*map(parse_outbox_item, earlier),
                                               *plan.outputs]:
                key = name.encode() if name is not None else None
                if kind == "contact" and name is not None:
                    records.append((self._topics.contact_enriched, key, value))
                    seen = contacts.get(name)
                    if seen is None or seen[0] < version:
                        contacts[name] = (version, value)
                    gone.discard(name)
                elif kind == "alert":
                    records.append((self._topics.customer_alerts, key, value))
                elif kind == "tombstone" and name is not None:
                    records.append((self._topics.contact_enriched, key, None))
                    contacts.pop(name, None)
                    gone.add(name)
                elif kind == "erased":
                    continue  # an output of an erased customer, withdrawn before publication
                else:
                    records.append((self._topics.dead_letter, key, value))
        return (records, published, [(c, ver, view) for c, (ver, view) in contacts.items()],
                sorted(gone))

    async def _retrying(self, dependency: str, call: Callable[[], Awaitable[T]]) -> T:
        """Call until it succeeds, backing off up to the configured maximum between tries."""
        delay = 0.05
        while True:
            try:
                result = await call()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise ProcessingDefect(f"{type(exc).__name__}: {exc}") from exc
                # the dependency is down or busy: retry, never skip
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


def clock_summary(clocks_by_partition: dict[int, PartitionClock]) -> float | None:
    """The watermark of the whole service: the slowest partition that has seen events."""
    marks = [c.watermark for c in clocks_by_partition.values() if c.watermark is not None]
    return min(marks) if marks else None
