"""The ports of the ingest use case: what it needs of a store and of an output topic, in the
project's words. Adapters implement them (service/adapters/redis_state.py, kafka_publish.py);
unit tests use in-memory ones (tests/unit/memory_store.py).

A port also says which of its failures waiting can cure (`is_transient`), so that the service
layer never names a client library's exception."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from service.adapters.failures import RecordsTooLarge
from service.domain.partition import PartitionCommit, PartitionData
from service.domain.records import CustomerState

__all__ = ["ContactView", "OutputRecord", "OutputSink", "PartitionStore", "ProcessingDefect",
           "RecordsTooLarge", "WriteConflict"]

# (topic, key, value) of one output record; a None value is a tombstone.
OutputRecord = tuple[str, bytes | None, bytes | None]
# (contact id, version, enriched view JSON) of a contact view to store for lookups.
ContactView = tuple[str, int, bytes]


class PartitionStore(Protocol):
    """Per input partition: its clock, customer states, timers, hour counters and outbox.

    `commit` must apply each partition's commit atomically and only if the partition's clock
    still shows the `seq` the batch read (otherwise report it as conflicted, writing nothing)."""

    timers_per_batch: int  # how many of the earliest timers `load` brings

    async def load(self, wanted: Mapping[int, Sequence[str]]) -> dict[int, PartitionData]:
        """Per partition: its clock, these states, the earliest timers, the outbox."""

    async def load_states(self, wanted: Mapping[int, Iterable[str]]
                          ) -> dict[int, dict[str, bytes | None]]:
        """More states (encoded) of each partition."""

    async def due_timers(self, bounds: Mapping[int, float]) -> dict[int, list[tuple[str, float]]]:
        """Every timer of each partition due before its bound, earliest first."""

    async def commit(self, commits: Mapping[int, PartitionCommit]) -> set[int]:
        """Apply each partition's commit; return the partitions whose clock had moved on."""

    async def finish_outbox(self, published: Mapping[int, int], contacts: Sequence[ContactView],
                            *, erased: Sequence[str] = ()) -> None:
        """Store the contact views, delete those named `erased`, and drop the first
        `published[p]` outbox items of each partition."""

    def encode(self, state: CustomerState) -> bytes:
        """The bytes `commit` would write for a state (raises what writing it would)."""

    def take_round_trips(self) -> list[float]:
        """Seconds of each round trip since the last call (for the latency histogram)."""

    def is_transient(self, exc: BaseException) -> bool:
        """Whether waiting and trying again can cure this failure of the store."""


class OutputSink(Protocol):
    async def send(self, records: Sequence[OutputRecord]) -> None:
        """Publish the records; return once the broker acknowledged them. Raise
        RecordsTooLarge, after publishing the others, for records it refuses as too large."""

    def is_transient(self, exc: BaseException) -> bool:
        """Whether waiting and trying again can cure this failure of the broker."""


class WriteConflict(Exception):
    """Partitions kept being written by another worker between this worker's read and commit.
    Transient: the batch is read and applied again."""


class ProcessingDefect(Exception):
    """A failure that retrying cannot cure (a bug, a state it cannot read). The worker stops
    without acknowledging the batch, so Kafka delivers it again after the fix or restart."""
