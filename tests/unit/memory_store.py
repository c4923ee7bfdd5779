"""In-memory implementations of the ingest use case's ports (service_layer/ports.py), for unit
tests of the service layer: a partition store with the commit script's semantics (seq guard,
states, counters, timers, clock, outbox, contact views) and a sink that keeps what it publishes.
Both can be told to fail, once or more, transiently or not. The Redis adapter itself is tested
against a real Redis (tests/integration)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from service.adapters.codec import decode_state, encode_state
from service.domain.partition import PartitionClock, PartitionCommit, PartitionData
from service.domain.records import CustomerState
from service.domain.storage_names import CLOCK_SEQ, CLOCK_WRITER, RECENT_PER_PARTITION
from service.service_layer.ports import ContactView, OutputRecord, RecordsTooLarge


class Unavailable(Exception):
    """The store or the broker is down: waiting can cure it."""


@dataclass
class _Partition:
    clock: dict[str, str] = field(default_factory=dict)
    states: dict[str, bytes] = field(default_factory=dict)
    timers: dict[str, float] = field(default_factory=dict)
    hours: dict[int, dict[str, int]] = field(default_factory=dict)
    outbox: list[bytes] = field(default_factory=list)
    # The at-risk work list: customer_id -> entry JSON, and the scores of each order
    risk: dict[str, bytes] = field(default_factory=dict)
    risk_scores: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    # The latest contacts: `[queue, contact_id]` JSON -> occurred_at
    recent: dict[bytes, float] = field(default_factory=dict)


class MemoryStore:
    """A PartitionStore in memory. `failures[operation]` lists exceptions raised by the next
    calls of that operation ("load", "commit", "finish_outbox", ...), one per call;
    `before_commit` runs before each commit (to let "another worker" write a partition)."""

    def __init__(self, timers_per_batch: int = 100) -> None:
        self.timers_per_batch = timers_per_batch
        self.partitions: dict[int, _Partition] = {}
        self.contacts: dict[str, tuple[int, bytes]] = {}
        self.failures: dict[str, list[BaseException]] = {}
        self.before_commit: Callable[[Mapping[int, PartitionCommit]], Awaitable[None]] | None = None
        self.commits = 0  # commit calls that wrote at least one partition
        self._round_trips: list[float] = []

    def _call(self, operation: str) -> None:
        self._round_trips.append(0.0)
        pending = self.failures.get(operation)
        if pending:
            raise pending.pop(0)

    def partition(self, partition: int) -> _Partition:
        return self.partitions.setdefault(partition, _Partition())

    # -- reads ------------------------------------------------------------------------------

    def clock(self, partition: int) -> PartitionClock:
        return PartitionClock.parse(self.partition(partition).clock)

    def state(self, partition: int, key: str) -> CustomerState | None:
        raw = self.partition(partition).states.get(key)
        return None if raw is None else decode_state(raw)

    def _due(self, partition: int, bound: float | None = None, limit: int | None = None
             ) -> list[tuple[str, float]]:
        timers = sorted(self.partition(partition).timers.items(), key=lambda kv: (kv[1], kv[0]))
        if bound is not None:
            timers = [(m, s) for m, s in timers if s < bound]
        return timers if limit is None else timers[:limit]

    async def load(self, wanted: Mapping[int, Sequence[str]]) -> dict[int, PartitionData]:
        self._call("load")
        out = {}
        for p, keys in wanted.items():
            part = self.partition(p)
            out[p] = PartitionData(PartitionClock.parse(part.clock),
                                   {k: part.states.get(k) for k in keys},
                                   self._due(p, limit=self.timers_per_batch),
                                   list(part.outbox), decode=decode_state)
        return out

    async def load_states(self, wanted: Mapping[int, Iterable[str]]
                          ) -> dict[int, dict[str, bytes | None]]:
        self._call("load_states")
        return {p: {k: self.partition(p).states.get(k) for k in keys}
                for p, keys in wanted.items()}

    async def due_timers(self, bounds: Mapping[int, float]) -> dict[int, list[tuple[str, float]]]:
        self._call("due_timers")
        return {p: self._due(p, bound) for p, bound in bounds.items()}

    # -- writes -----------------------------------------------------------------------------

    async def commit(self, commits: Mapping[int, PartitionCommit]) -> set[int]:
        if self.before_commit is not None:
            await self.before_commit(commits)
        self._call("commit")
        conflicts = {p for p, c in commits.items()
                     if self.partition(p).clock.get(CLOCK_SEQ, "") != c.seq}
        # Encode every state first: a state that cannot be written fails the whole call.
        encoded = {p: {k: None if s is None else c.encoded.get(k) or encode_state(s)
                       for k, s in c.states.items()}
                   for p, c in commits.items() if p not in conflicts}
        for p, states in encoded.items():
            c, part = commits[p], self.partition(p)
            for key, raw in states.items():
                if raw is None:
                    part.states.pop(key, None)
                else:
                    part.states[key] = raw
                    c.sizes[key] = len(raw)
            for hour, deltas in c.counters.items():
                bucket = part.hours.setdefault(hour, {})
                for name, n in deltas.items():
                    bucket[name] = bucket.get(name, 0) + n
            part.timers.update(c.timers_add)
            for member in c.timers_remove:
                part.timers.pop(member, None)
            part.clock.update(c.clock_fields)
            for name, n in c.clock_increments.items():
                if n:
                    part.clock[name] = str(int(part.clock.get(name, "0")) + n)
            seq = str(int(part.clock.get(CLOCK_SEQ) or 0) + 1)
            part.clock[CLOCK_SEQ], part.clock[CLOCK_WRITER] = seq, c.writer
            part.outbox.extend(c.outbox)
            for customer_id in c.risk_remove:
                part.risk.pop(customer_id, None)
                part.risk_scores.pop(customer_id, None)
            for customer_id, (entry, scores) in c.risk_put.items():
                part.risk[customer_id] = entry
                part.risk_scores[customer_id] = scores
            if c.recent_add:  # as commit_partition.lua: add, drop the older, keep the latest
                part.recent.update(c.recent_add)
                before = -math.inf if c.recent_before is None else c.recent_before
                kept = sorted((t, m) for m, t in part.recent.items() if t > before)
                part.recent = {m: t for t, m in kept[-RECENT_PER_PARTITION:]}
            c.committed_seq = seq
        if encoded:
            self.commits += 1
        return conflicts

    async def finish_outbox(self, published: Mapping[int, int], contacts: Sequence[ContactView],
                            *, erased: Sequence[str] = ()) -> None:
        self._call("finish_outbox")
        for contact_id, version, view in contacts:
            current = self.contacts.get(contact_id)
            if current is None or current[0] < version:
                self.contacts[contact_id] = (version, view)
        for contact_id in erased:
            self.contacts.pop(contact_id, None)
        for p, n in published.items():
            del self.partition(p).outbox[:n]

    def write_behind(self, partition: int) -> None:
        """Another worker commits the partition (its seq moves on, nothing else changes)."""
        clock = self.partition(partition).clock
        clock[CLOCK_SEQ] = str(int(clock.get(CLOCK_SEQ) or 0) + 1)
        clock[CLOCK_WRITER] = "another-worker"

    def encode(self, state: CustomerState) -> bytes:
        return encode_state(state)

    def take_round_trips(self) -> list[float]:
        taken, self._round_trips = self._round_trips, []
        return taken

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, Unavailable)


class MemorySink:
    """An OutputSink keeping what it publishes. `failures`: exceptions raised by the next
    sends, one per call (nothing of that call published); records over `limit` bytes are
    refused as too large, as Kafka would, after the others were published."""

    def __init__(self, limit: int = 1 << 30) -> None:
        self.records: list[OutputRecord] = []
        self.failures: list[BaseException] = []
        self.limit = limit

    async def send(self, records: Sequence[OutputRecord]) -> None:
        if self.failures:
            raise self.failures.pop(0)
        refused = {i: len(v or b"") for i, (_, _, v) in enumerate(records)
                   if len(v or b"") > self.limit}
        self.records.extend(r for i, r in enumerate(records) if i not in refused)
        if refused:
            raise RecordsTooLarge(refused, self.limit)

    def on(self, topic: str) -> list[OutputRecord]:
        return [r for r in self.records if r[0] == topic]

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, Unavailable)
