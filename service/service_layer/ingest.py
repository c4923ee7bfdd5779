"""Applying one batch of input messages: decode, read, apply, commit, publish, count.

For each input partition in the batch: read its clock, the states of the customers in the
batch and the timers that fall due (batch_reads); apply the events and settle every touched or
due customer at the new watermark (partition_step, no I/O); then commit states, counter
deltas, timers, clock and the outbox of outputs atomically per partition through the store.
Outputs are published to Kafka from the outbox (so a crash between the commit and the publish
loses nothing), then the outbox is trimmed (outbox). The worker acknowledges the batch to
Kafka only after `process` returned.

While the store or Kafka fails, `process` retries without end (with back-off) and never skips
a message. Cancellation (shutdown) propagates, and the batch is then not acknowledged. A batch
that fails for a reason of its own has the events that cause it dead-lettered (quarantine).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

import orjson

from service.adapters.codec import decode_event
from service.adapters.metrics import PipelineMetrics
from service.domain.events import ContactEvent, Rejection, RejectReason
from service.domain.partition import PartitionData
from service.domain.validation import check_record
from service.service_layer import batch_metrics, quarantine
from service.service_layer.batch_reads import BatchReads
from service.service_layer.dead_letters import (
    InputMessage,
    dead_letter_key,
    dead_letter_record,
    key_text,
    output_stub,
)
from service.service_layer.ingest_settings import IngestSettings
from service.service_layer.outbox import Topics, publication
from service.service_layer.partition_step import (
    BatchOutcome,
    Fold,
    PartitionPlan,
    StepRules,
    fold_partition,
    settle_partition,
)
from service.service_layer.ports import (
    OutputRecord,
    OutputSink,
    PartitionStore,
    ProcessingDefect,
    RecordsTooLarge,
    WriteConflict,
)
from service.service_layer.retrying import Retrying
from service.service_layer.state_cache import StateCache
from service.service_layer.suppression import Suppression

log = logging.getLogger(__name__)
Valid = dict[int, list[tuple[InputMessage, ContactEvent]]]
Skip = Mapping[int, Mapping[tuple[str, int], str]]  # partition -> (topic, offset) -> why
__all__ = ["BatchOutcome", "IngestProcessor", "IngestSettings", "InputMessage",
           "ProcessingDefect", "RecordsTooLarge", "StepRules", "Topics"]


@dataclass
class _Sorted:
    """A batch's messages sorted at the door."""

    valid: Valid = field(default_factory=dict)
    rejected: list[tuple[InputMessage, Rejection]] = field(default_factory=list)
    # Events of erased customers: dropped, only their offsets are recorded as read.
    suppressed: dict[int, list[InputMessage]] = field(default_factory=dict)


class IngestProcessor:
    def __init__(self, *, store: PartitionStore, sink: OutputSink, metrics: PipelineMetrics,
                 settings: IngestSettings, cache: StateCache | None = None,
                 suppression: Suppression | None = None, fold_in_thread: bool = False) -> None:
        self._store = store
        self._fold_in_thread = fold_in_thread
        self._sink = sink
        self._metrics = metrics
        self._settings = settings
        self._rules = settings.rules
        self._cache = cache
        self._suppression = suppression
        self._reads = BatchReads(store, cache, settings.rules.max_contacts)
        self._retrying = Retrying(metrics, settings.retry_max_backoff)
        self.healthy = self._retrying.healthy

    # -- the batch --------------------------------------------------------------------------

    async def process(self, batch: Sequence[InputMessage]) -> BatchOutcome:
        m = self._metrics
        door = await self._sort(batch)
        outcome = BatchOutcome(invalid=len(door.rejected))
        if door.rejected:
            now = datetime.now(UTC)
            max_copy = self._settings.dead_letter_max_copy
            await self._send([
                (self._settings.topics.dead_letter, dead_letter_key(msg, max_copy),
                 orjson.dumps(dead_letter_record(msg, r.reason.value, r.message, now, max_copy)))
                for msg, r in door.rejected])
            for msg, r in door.rejected:
                m.invalid_by_topic_reason[(msg.topic, r.reason.value)].inc()
        if door.valid:
            plans, skipped = await self._apply(door.valid, door.suppressed)
            batch_metrics.observe_published(m, door.valid, plans, skipped, self._rules.caps)
            for plan in plans.values():
                outcome.add(plan.outcome)
                batch_metrics.count_applied(m, plan)
        for msgs in door.suppressed.values():
            outcome.suppressed += len(msgs)
            for msg in msgs:
                m.suppressed_by_topic[msg.topic].inc()
        if self._cache is not None:
            m.state_cache_bytes.set(self._cache.bytes)
        for seconds in self._store.take_round_trips():
            m.redis_round_trip.observe(seconds)
        m.batch_events.observe(len(batch))
        return outcome

    async def _sort(self, batch: Sequence[InputMessage]) -> _Sorted:
        """Decode and check each message; set aside the events of erased customers."""
        suppression = self._suppression
        if suppression is not None and not suppression.loaded:
            await self._retrying.call("redis", self._store, suppression.load)
        erased = suppression.erased if suppression is not None and len(suppression) else None
        if self._fold_in_thread:  # pure CPU, like the fold: off the event loop (see _plan)
            return await asyncio.to_thread(self._sort_messages, batch, erased)
        return self._sort_messages(batch, erased)

    def _sort_messages(self, batch: Sequence[InputMessage],
                       erased: Callable[[str | None], bool] | None) -> _Sorted:
        door = _Sorted()
        consumed: dict[str, int] = {}
        for msg in batch:
            consumed[msg.topic] = consumed.get(msg.topic, 0) + 1
            result = self._decode(msg)
            if isinstance(result, Rejection):
                if erased is not None and erased(key_text(msg.key)):
                    door.suppressed.setdefault(msg.partition, []).append(msg)  # not
                    door.valid.setdefault(msg.partition, [])  # dead-lettered: that would
                else:  # copy the erased id
                    door.rejected.append((msg, result))
            elif erased is not None and erased(result.header.customer_id):
                door.suppressed.setdefault(msg.partition, []).append(msg)
                door.valid.setdefault(msg.partition, [])  # its clock records the offset
            else:
                door.valid.setdefault(msg.partition, []).append((msg, result))
        for topic, n in consumed.items():
            self._metrics.consumed_by_topic[topic].inc(n)
        return door

    def _decode(self, msg: InputMessage) -> ContactEvent | Rejection:
        kind = self._rules.topic_kinds.get(msg.topic)
        if kind is None:
            return Rejection(RejectReason.UNKNOWN_TOPIC, msg.topic)
        door = self._settings.door
        try:
            event = decode_event(kind, msg.value, self._settings.max_event_bytes, door.max_depth)
            if isinstance(event, Rejection):
                return event
            return check_record(event, msg.key, msg.timestamp_ms, door) or event
        except Exception as exc:  # a defect must not stop the partition: dead-letter it
            log.exception("could not decode %s[%d]@%d", msg.topic, msg.partition, msg.offset)
            return Rejection(RejectReason.PROCESSING_ERROR, f"{kind}: {exc!r}"[:500])

    # -- commit and publish -----------------------------------------------------------------

    async def _apply(self, valid: Valid, suppressed: dict[int, list[InputMessage]]
                     ) -> tuple[dict[int, PartitionPlan], dict[int, dict[tuple[str, int], str]]]:
        """Commit, publish and trim the outbox; the plans and the events quarantined."""
        skipped: dict[int, dict[tuple[str, int], str]] = {}
        try:
            plans, leftovers = await self._retrying.call(
                "redis", self._store, lambda: self._commit(valid, suppressed))
        except ProcessingDefect as defect:
            plans, leftovers = await self._quarantine(valid, suppressed, defect, skipped)
        out = publication({p: plan.outputs for p, plan in plans.items()}, leftovers,
                          self._settings.topics)
        if out.records:
            await self._send(out.records)
        await self._retrying.call("redis", self._store, lambda: self._store.finish_outbox(
            out.published, out.contacts, erased=out.gone))
        return plans, skipped

    async def _send(self, records: Sequence[OutputRecord]) -> None:
        """Publish, retrying while Kafka fails; a record Kafka refuses as too large is replaced
        by a small dead letter (sending it again could never succeed)."""
        try:
            await self._retrying.call("kafka", self._sink, lambda: self._sink.send(records))
        except ProcessingDefect as defect:
            refused = defect.__cause__
            if not isinstance(refused, RecordsTooLarge):
                raise
            now = datetime.now(UTC)
            dead_letter = self._settings.topics.dead_letter
            stubs: list[OutputRecord] = []
            for index, size in sorted(refused.sizes.items()):
                topic, key, value = records[index]
                log.error("%s: a record of %d bytes (key %r) is over Kafka's limit of %d bytes; "
                          "a dead letter stands for it", topic, size,
                          None if key is None else key[:80], refused.limit)
                self._metrics.outputs_too_large.labels(topic).inc()
                stubs.append((dead_letter, None if key is None else key[:1024],
                              output_stub(topic, key, value or b"", refused.limit, now,
                                          dead_letter)))
            await self._retrying.call("kafka", self._sink, lambda: self._sink.send(stubs))

    async def _commit(self, valid: Valid, suppressed: dict[int, list[InputMessage]],
                      skip: Skip | None = None,
                      ) -> tuple[dict[int, PartitionPlan], dict[int, list[bytes]]]:
        """Read, apply, commit; on a write conflict read again and redo those partitions.
        `skip`: per partition, (topic, offset) of events to dead-letter as processing_error.
        The plans and each partition's outbox items left over from before."""
        pending = dict(valid)
        done: dict[int, PartitionPlan] = {}
        leftovers: dict[int, list[bytes]] = {}
        cache = self._cache
        try:
            for attempt in range(20):
                plans, data = await self._plan(pending, suppressed, skip)
                written_at = time.monotonic()
                conflicts = await self._store.commit({p: plan.commit
                                                      for p, plan in plans.items()})
                for partition, plan in plans.items():
                    if partition in conflicts:
                        continue
                    done[partition] = plan
                    leftovers[partition] = data[partition].outbox
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
            # may differ from the store. The retry reads them again.
            if cache is not None:
                cache.drop(valid)
            raise
        raise WriteConflict(f"partitions {sorted(pending)} kept changing under this worker")

    async def _plan(self, valid: Valid, suppressed: dict[int, list[InputMessage]],
                    skip: Skip | None = None,
                    ) -> tuple[dict[int, PartitionPlan], dict[int, PartitionData]]:
        """Read, apply the events to their states, read the timers that fall due at the new
        watermarks (and their states), then settle every touched or due state."""
        reads = self._reads
        loaded = await reads.load(valid)
        data = loaded.data
        if self._suppression is not None:
            await self._recheck(valid, data, suppressed)
        current, counted = await reads.use_held(valid, loaded)
        if self._cache is not None:
            self._metrics.state_reads_memory.inc(counted.memory)
            self._metrics.state_reads_redis.inc(counted.store)
        await reads.held_apart(valid, data)
        writer = "" if self._cache is None else self._cache.token
        rules = self._rules

        def fold() -> dict[int, Fold]:
            return {p: fold_partition(p, valid[p], data[p], rules, writer=writer,
                                      skip=skip.get(p) if skip else None,
                                      dropped=suppressed.get(p, ()))
                    for p in valid}

        def settle() -> dict[int, PartitionPlan]:
            return {p: settle_partition(folds[p], data[p], rules) for p in valid}

        def settle_and_encode() -> dict[int, PartitionPlan]:
            plans = settle()
            encode = self._store.encode
            for plan in plans.values():
                c = plan.commit
                c.encoded = {name: encode(s) for name, s in c.states.items() if s is not None}
            return plans

        if not self._fold_in_thread:
            folds = fold()
            await reads.due(data, {p: f.watermark for p, f in folds.items()}, current)
            return settle(), data
        # `fold_in_thread` (a worker): folding, settling and encoding the states, pure and
        # most of a batch's CPU, run in a thread, so the event loop answers lookups meanwhile
        # instead of waiting for the batch; it takes the interpreter back every switch
        # interval (the worker sets 1 ms). About 8% more CPU per event. Nothing on the loop
        # touches this batch's states: lookups read the store.
        folds = await asyncio.to_thread(fold)
        await reads.due(data, {p: f.watermark for p, f in folds.items()}, current)
        return await asyncio.to_thread(settle_and_encode), data

    async def _recheck(self, valid: Valid, data: Mapping[int, PartitionData],
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

    # -- quarantine: a batch that fails for a reason of its own ----------------------------

    async def _quarantine(self, valid: Valid, suppressed: dict[int, list[InputMessage]],
                          defect: ProcessingDefect, skip: dict[int, dict[tuple[str, int], str]]
                          ) -> tuple[dict[int, PartitionPlan], dict[int, list[bytes]]]:
        """Applying the batch raised something retrying cannot cure: find the events that cause
        it, dead-letter exactly those (`processing_error`) and apply the others. When no event
        causes it (the failure comes again without them), the defect propagates: the worker
        stops and its restart is the cure. `skip` receives the quarantined events."""
        log.error("a batch of %d events cannot be applied (%s); looking for the events that "
                  "cause it", sum(map(len, valid.values())), defect)
        kinds = self._rules.topic_kinds
        for partition, items in valid.items():
            trial = partial(self._trial, partition, items)
            found = await self._retrying.call(
                "redis", self._store, partial(quarantine.culprits, items, trial, kinds))
            if found:
                skip[partition] = found
        if not skip:
            log.error("no event of the batch causes the failure")
            raise defect
        for partition, culprits in skip.items():
            for (topic, offset), message in culprits.items():
                log.error("%s[%d]@%d: dead-lettered as processing_error: %s", topic, partition,
                          offset, message)
        return await self._retrying.call(
            "redis", self._store, lambda: self._commit(valid, suppressed, skip))

    async def _trial(self, partition: int, items: list[tuple[InputMessage, ContactEvent]],
                     indexes: list[int]) -> BaseException | None:
        """Plan the partition with only these events (in batch order) and encode what the commit
        would write, without writing: the exception it raises, if any. States are read from
        the store (the partition's held states were dropped when the batch failed)."""
        try:
            plans, _ = await self._plan({partition: [items[i] for i in indexes]}, {})
            commit = plans[partition].commit
            for name, state in commit.states.items():
                if state is not None and name not in commit.encoded:
                    self._store.encode(state)
        except Exception as exc:
            if self._store.is_transient(exc):
                raise
            return exc
        return None
