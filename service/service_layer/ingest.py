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
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    outbox_item,
    parse_outbox_item,
)
from service.domain import watermark as clocks
from service.domain.counters import BucketKey, expand, merge_counts
from service.domain.engine import (
    Settled,
    alert_payload,
    apply_event,
    is_too_late,
    new_state,
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
from service.service_layer.state_cache import StateCache

log = logging.getLogger(__name__)
T = TypeVar("T")
TOO_LATE = RejectReason.TOO_LATE.value


@dataclass(frozen=True, slots=True)
class InputMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None


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


class OutputSink(Protocol):
    async def send(self, records: Sequence[tuple[str, bytes | None, bytes]]) -> None:
        """Publish (topic, key, value) records; return once the broker acknowledged them."""


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
    updates: int = 0
    alerts: int = 0


def dead_letter_record(msg: InputMessage, reason: str, message: str, now: datetime
                       ) -> dict[str, Any]:
    """The dead-letter JSON object (schemas/dead-letter.schema.json) for one message."""
    key_text: str | None = None
    if msg.key is not None:
        try:
            key_text = msg.key.decode("utf-8")
        except UnicodeDecodeError:
            key_text = None
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
        "key_base64": None if msg.key is None else base64.b64encode(msg.key).decode(),
        "value_base64": None if msg.value is None else base64.b64encode(msg.value).decode(),
        "reason": reason,
        "message": message,
        "event_id": event_id,
        "dead_lettered_at": _now_text(now),
    }


def _now_text(now: datetime) -> str:
    return now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Plan:
    commit: PartitionCommit
    outcome: BatchOutcome
    per_topic: dict[str, list[int]] = field(default_factory=dict)  # applied, dup, late
    late: list[tuple[str, str]] = field(default_factory=list)  # (topic, reason) for metrics
    watermark: float | None = None
    # (kind, labels, count) of what was published: first sightings, repeats, corrections
    published: list[tuple[str, tuple[str, str, str], int]] = field(default_factory=list)
    # The outbox items of `commit`, not encoded: (kind, key, version, value)
    outputs: list[tuple[str, str | None, int, bytes]] = field(default_factory=list)
    # Count vectors of the settled contacts; hash fields of `commit.counters` once at the end
    counts: dict[BucketKey, list[int]] = field(default_factory=dict)

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
        self.healthy = {"redis": True, "kafka": True}

    # -- the batch --------------------------------------------------------------------------

    async def process(self, batch: Sequence[InputMessage]) -> BatchOutcome:
        m = self._metrics
        valid: dict[int, list[tuple[InputMessage, ContactEvent]]] = {}
        rejected: list[tuple[InputMessage, Rejection]] = []
        consumed: dict[str, int] = {}
        for msg in batch:
            consumed[msg.topic] = consumed.get(msg.topic, 0) + 1
            result = self._decode(msg)
            if isinstance(result, Rejection):
                rejected.append((msg, result))
            else:
                valid.setdefault(msg.partition, []).append((msg, result))

        for topic, n in consumed.items():
            m.consumed_by_topic[topic].inc(n)
        outcome = BatchOutcome(invalid=len(rejected))
        if rejected:
            now = datetime.now(UTC)
            records = [
                (self._topics.dead_letter, msg.key, orjson.dumps(
                    dead_letter_record(msg, r.reason.value, r.message, now)))
                for msg, r in rejected
            ]
            await self._retrying("kafka", lambda: self._sink.send(records))
            for msg, r in rejected:
                m.invalid_by_topic_reason[(msg.topic, r.reason.value)].inc()
        if valid:
            plans = await self._apply(valid)
            self._observe(valid, plans)
            for plan in plans.values():
                for name in ("applied", "duplicates", "too_late", "updates", "alerts"):
                    setattr(outcome, name, getattr(outcome, name) + getattr(plan.outcome, name))
                for topic, (applied, dups, _late) in plan.per_topic.items():
                    m.applied_by_topic[topic].inc(applied)
                    m.duplicates_by_topic[topic].inc(dups)
                for topic, reason in plan.late:
                    m.invalid_by_topic_reason[(topic, reason)].inc()
        if self._cache is not None:
            m.state_cache_bytes.set(self._cache.bytes)
        for seconds in self._state.round_trips:
            m.redis_round_trip.observe(seconds)
        self._state.round_trips.clear()
        m.batch_events.observe(len(batch))
        return outcome

    def _observe(self, valid: dict[int, list[tuple[InputMessage, ContactEvent]]],
                 plans: dict[int, _Plan]) -> None:
        """Latencies of this batch, and the business counters of what it published."""
        m = self._metrics
        now = time.time()
        transfers: dict[str, int] = {}
        surveys: dict[str, int] = {}
        for items in valid.values():
            for msg, event in items:
                m.event_latency.observe(max(0.0, now - event.header.occurred_at.timestamp()))
                if msg.timestamp_ms:
                    m.broker_latency.observe(max(0.0, now - msg.timestamp_ms / 1000))
                if isinstance(event, Transfer):
                    transfers[event.from_queue] = transfers.get(event.from_queue, 0) + 1
                elif isinstance(event, SurveyAnswered):
                    surveys[event.source] = surveys.get(event.source, 0) + 1
        for queue, n in transfers.items():
            m.transfers.labels(queue).inc(n)
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
            m.contacts.labels(queue, channel, outcome).inc(n)
        for (queue, channel), n in repeats.items():
            m.repeats.labels(queue, channel).inc(n)
        if corrections:
            m.corrections.inc(corrections)

    def _decode(self, msg: InputMessage) -> ContactEvent | Rejection:
        kind = self._topic_kinds.get(msg.topic)
        if kind is None:
            return Rejection(RejectReason.UNKNOWN_TOPIC, msg.topic)
        try:
            return decode_event(kind, msg.value, self._max_event_bytes)
        except Exception as exc:  # a defect must not stop the partition: dead-letter it
            log.exception("could not decode %s[%d]@%d", msg.topic, msg.partition, msg.offset)
            return Rejection(RejectReason.PROCESSING_ERROR, f"{kind}: {exc!r}"[:500])

    async def _apply(self, valid: dict[int, list[tuple[InputMessage, ContactEvent]]]
                     ) -> dict[int, _Plan]:
        plans, leftovers = await self._retrying("redis", lambda: self._commit(valid))
        records, published, contacts = self._outbox_records(plans, leftovers)
        if records:
            await self._retrying("kafka", lambda: self._sink.send(records))
        await self._retrying("redis", lambda: self._state.finish_outbox(published, contacts))
        return plans

    async def _commit(self, valid: dict[int, list[tuple[InputMessage, ContactEvent]]]
                      ) -> tuple[dict[int, _Plan], dict[int, list[bytes]]]:
        """Read, fold, commit; on a write conflict read again and redo those partitions."""
        pending = dict(valid)
        done: dict[int, _Plan] = {}
        leftovers: dict[int, list[bytes]] = {}
        cache = self._cache
        try:
            for attempt in range(20):
                plans, outboxes = await self._plan(pending)
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

    async def _plan(self, valid: dict[int, list[tuple[InputMessage, ContactEvent]]]
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
        folds = {p: self._fold_partition(p, valid[p], data[p]) for p in valid}
        await self._read_due(data, {p: f.watermark for p, f in folds.items()}, current)
        plans = {p: self._settle_partition(folds[p], data[p]) for p in valid}
        return plans, {p: data[p].outbox for p in valid}

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

    def _fold_partition(self, partition: int, items: list[tuple[InputMessage, ContactEvent]],
                        data: PartitionData) -> _Fold:
        """Apply the partition's events to their states; the new watermark."""
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
                    now)
                plan.emit("dead", msg.key.decode("utf-8", "replace") if msg.key else None, 0,
                          orjson.dumps(record))
                continue
            seen = newest.get(topic)
            if seen is None or t > seen:
                newest[topic] = t
            key = state_key(event)
            state = states.get(key)
            if state is None:
                state = data.state(key) or new_state(event)
                states[key] = state
            if apply_event(state, event):
                counts[0] += 1
                outcome.applied += 1
                applied_counts[topic] = applied_counts.get(topic, 0) + 1
                touched.add(key)
            else:
                counts[1] += 1
                outcome.duplicates += 1
        lagging = [t for t in self._input_topics
                   if self._lagging(t, partition, offsets.get(t))]
        fold.watermark = plan.watermark = clocks.advance(watermark, newest, lagging)
        return fold

    def _settle_partition(self, fold: _Fold, data: PartitionData) -> _Plan:
        """Settle the touched states and those whose timers fell due; the partition's commit."""
        plan = fold.plan
        states = fold.states
        touched = fold.touched
        watermark = fold.watermark
        for member, due_at in data.due:
            if watermark is None or due_at >= watermark:
                break  # timers come sorted by due time
            if member not in states:
                if not data.has(member):
                    continue  # not read (cannot happen: _read_due read every due one)
                loaded = data.state(member)
                if loaded is None:  # expired meanwhile
                    plan.commit.timers_remove.append(member)
                    continue
                states[member] = loaded
            touched.add(member)
        for key in touched:
            if watermark is not None:
                self._settle(key, states[key], watermark, plan)
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
        settled: Settled = settle(state, watermark, self._policy)
        commit = plan.commit
        merge_counts(plan.counts, settled.counts)
        for update in settled.updates:
            view = update.view
            labels = (view["queue"], view["channel"], view["outcome"])
            if update.version == 1:
                plan.published.append(("contact", labels, 1))
                if view["is_repeat"]:
                    plan.published.append(("repeat", labels, 1))
            else:
                plan.published.append(("correction", labels, 1))
            plan.emit("contact", update.contact_id, update.version, orjson.dumps(update.view))
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
        for alert in settled.alerts:
            delta = 1 if alert.alert == "at_risk_entered" else -1
            commit.clock_increments["at_risk"] = commit.clock_increments.get("at_risk", 0) + delta
            plan.emit("alert", alert.customer_id, alert.version,
                      orjson.dumps(alert_payload(alert)))
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
    ) -> tuple[list[tuple[str, bytes | None, bytes]], dict[int, int],
               list[tuple[str, int, bytes]]]:
        """Kafka records for the outbox items (left over from before, then this batch's),
        how many items to trim per partition, and the contact views to store."""
        records: list[tuple[str, bytes | None, bytes]] = []
        contacts: dict[str, tuple[int, bytes]] = {}
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
                elif kind == "alert":
                    records.append((self._topics.customer_alerts, key, value))
                else:
                    records.append((self._topics.dead_letter, key, value))
        return records, published, [(c, ver, view) for c, (ver, view) in contacts.items()]

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
