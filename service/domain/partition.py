"""What the engine keeps per input partition, as the store reads and writes it: the clock,
what a batch reads (PartitionData) and what it writes (PartitionCommit).

Plain data, no I/O: the store (service/adapters/redis_state.py) fills and persists these, the
partition step (service/service_layer/partition_step.py) reads and builds them. The clock's
field names are in storage_names, parsed and written only here."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from service.domain import storage_names as names
from service.domain.records import CustomerState


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class PartitionClock:
    seq: str = ""
    writer: str = ""  # the token of the worker that committed `seq` (StateCache)
    watermark: float | None = None
    newest: dict[str, float] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    at_risk: int = 0
    noisy: int = 0  # customers marked noisy (engine.overflows)
    bands: dict[int, int] = field(default_factory=dict)
    joins: dict[str, int] = field(default_factory=dict)
    erasures: int = 0  # the erasure generation swept into this partition
    # Per segment label: value at risk in cents, and customers at risk (domain/value.py)
    value_at_risk: dict[str, int] = field(default_factory=dict)
    at_risk_by_segment: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def parse(raw: Mapping[Any, Any]) -> PartitionClock:
        """The clock from its stored hash (field names and values as str or bytes)."""
        clock = PartitionClock()
        for key, value in raw.items():
            name, text = _text(key), _text(value)
            if name == names.CLOCK_SEQ:
                clock.seq = text
            elif name == names.CLOCK_WRITER:
                clock.writer = text
            elif name == names.CLOCK_WATERMARK:
                clock.watermark = float(text)
            elif name.startswith(names.CLOCK_NEWEST):
                clock.newest[name[2:]] = float(text)
            elif name.startswith(names.CLOCK_OFFSET):
                clock.offsets[name[2:]] = int(text)
            elif name.startswith(names.CLOCK_APPLIED):
                clock.applied[name[2:]] = int(text)
            elif name == names.CLOCK_AT_RISK:
                clock.at_risk = int(text)
            elif name == names.CLOCK_NOISY:
                clock.noisy = int(text)
            elif name == names.CLOCK_ERASURES:
                clock.erasures = int(text)
            elif name in names.CLOCK_JOINS:
                clock.joins[name] = int(text)
            elif name.startswith(names.CLOCK_VALUE_AT_RISK):
                clock.value_at_risk[name[len(names.CLOCK_VALUE_AT_RISK):]] = int(text)
            elif name.startswith(names.CLOCK_AT_RISK_SEGMENT):
                clock.at_risk_by_segment[name[len(names.CLOCK_AT_RISK_SEGMENT):]] = int(text)
            elif name.startswith(names.CLOCK_BAND):
                clock.bands[int(name[len(names.CLOCK_BAND):])] = int(text)
        return clock


def progress_fields(watermark: float | None, newest: Mapping[str, float],
                    offsets: Mapping[str, int], applied: Mapping[str, int]) -> dict[str, str]:
    """The clock fields a commit sets: watermark, and per topic the newest event time, the
    last offset and the count applied (as `PartitionClock.parse` reads them back)."""
    fields: dict[str, str] = {}
    if watermark is not None:
        fields[names.CLOCK_WATERMARK] = repr(watermark)
    for topic, t in newest.items():
        fields[names.CLOCK_NEWEST + topic] = repr(t)
    for topic, offset in offsets.items():
        fields[names.CLOCK_OFFSET + topic] = str(offset)
    for topic, n in applied.items():
        fields[names.CLOCK_APPLIED + topic] = str(n)
    return fields


def band_field(band: int) -> str:
    return f"{names.CLOCK_BAND}{band}"


def clock_summary(clocks: Mapping[int, PartitionClock]) -> float | None:
    """The watermark of the whole service: the slowest partition that has seen events."""
    marks = [c.watermark for c in clocks.values() if c.watermark is not None]
    return min(marks) if marks else None


class UndecodableState(Exception):
    """A stored state that cannot be decoded: only the events of that one customer are
    affected (the worker dead-letters them; the others move on)."""

    def __init__(self, key: str, cause: BaseException) -> None:
        super().__init__(f"the stored state {key!r} cannot be decoded "
                         f"({type(cause).__name__}: {cause})")
        self.key = key


def _no_decoder(raw: bytes) -> CustomerState:
    raise TypeError("this partition's states came without a decoder")


@dataclass
class PartitionData:
    """What a batch reads of one partition: states as the store holds them (encoded, decoded
    on first use by `decode`), and states this worker kept in memory since its last commit of
    the partition (`held`)."""

    clock: PartitionClock
    states: dict[str, bytes | None]
    due: list[tuple[str, float]]
    outbox: list[bytes]
    due_until: float | None = None  # `due` holds every timer due before this, not the first
    held: dict[str, CustomerState] = field(default_factory=dict)
    decode: Callable[[bytes], CustomerState] = _no_decoder

    def has(self, key: str) -> bool:
        return key in self.held or key in self.states

    def state(self, key: str) -> CustomerState | None:
        held = self.held.get(key)
        if held is not None:
            return held
        raw = self.states.get(key)
        if raw is None:
            return None
        try:
            return self.decode(raw)
        except Exception as exc:
            raise UndecodableState(key, exc) from exc


@dataclass
class PartitionCommit:
    """Everything one batch writes to a partition, applied atomically by the store, guarded
    by the clock's `seq` as it was read."""

    seq: str
    states: dict[str, CustomerState | None]  # None: delete
    counters: dict[int, dict[str, int]]  # hour -> counter field -> delta
    timers_add: dict[str, float]  # state key -> event time it next needs attention
    timers_remove: list[str]
    clock_fields: dict[str, str]  # set as they are (progress_fields)
    outbox: list[bytes]
    clock_increments: dict[str, int] = field(default_factory=dict)
    writer: str = ""  # stored as the clock's `w`: the committing worker's token, if any
    # The at-risk work list: customer_id -> (entry JSON, its scores in value, score, since
    # order); and the customer_ids to remove from it.
    risk_put: dict[str, tuple[bytes, tuple[int, float, float]]] = field(default_factory=dict)
    risk_remove: list[str] = field(default_factory=list)
    # The latest contacts (storage_names.RECENT): `[queue, contact_id]` JSON -> occurred_at,
    # added; and the event time before which they are dropped (None: nothing to drop).
    recent_add: dict[bytes, float] = field(default_factory=dict)
    recent_before: float | None = None
    # States already encoded as the store writes them (by the service layer, off the event
    # loop); the store encodes the others itself.
    encoded: dict[str, bytes] = field(default_factory=dict)
    # Set by the store once committed: the clock's new seq, and each written state's encoded
    # size in bytes.
    committed_seq: str | None = None
    sizes: dict[str, int] = field(default_factory=dict)

    def increment(self, name: str, delta: int) -> None:
        self.clock_increments[name] = self.clock_increments.get(name, 0) + delta


NO_WATERMARK = -math.inf  # a timer due at once: settle as soon as there is a watermark
