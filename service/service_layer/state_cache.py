"""Customer states kept in the worker's memory between batches, per input partition.

A batch reads the states it needs from Redis and decodes them; the fold then mutates them in
place and the commit script writes them back. Keeping the objects after a commit saves the next
batch the read and the decoding (and keeps what the fold caches on the object). They are exactly
what Redis holds as long as nobody else wrote the partition since: the commit script is guarded
by the partition clock's `seq`, and it also stores the committing worker's token (`w`). So the
cache of a partition is used only while Redis' clock still shows the `seq` and token of this
worker's last commit of it (checked on every read of the clock, in the same round trip).

A partition's cache is dropped when that check fails, when a batch fails while planning or
committing it (the fold mutated the objects), and when partitions are revoked or assigned.
A state leaves the cache when `settle` forgets it, and it is not used once its key may have
expired in Redis (a state's idle time-to-live starts at each write). The cache is bounded by an
estimate of its bytes in memory; the least recently used states are evicted first.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from service.domain.partition import PartitionClock
from service.domain.records import CustomerState
from service.domain.storage_names import UNIDENTIFIED

# Bytes of Python objects per byte of a state's JSON: about 5 for a decoded state (measured on
# the Anonymous Bank month), more once the fold caches derived values on it.
PYTHON_BYTES_PER_JSON_BYTE = 8
# The share of the idle time-to-live after a write during which a cached state is used: the
# rest covers the time between the clock's check and the next commit.
_TTL_SHARE = 0.9


@dataclass(slots=True)
class _Held:
    state: CustomerState
    size: int  # estimated bytes in memory
    written_at: float  # time.monotonic() just before the commit that wrote it


class StateCache:
    def __init__(self, max_bytes: int, state_ttl: float) -> None:
        self.max_bytes = max_bytes
        self.token = uuid.uuid4().hex[:16]  # this worker's mark on the clocks it commits
        self._max_age = state_ttl * _TTL_SHARE
        self._seqs: dict[int, str] = {}  # partition -> seq of this worker's last commit
        self._held: OrderedDict[tuple[int, str], _Held] = OrderedDict()
        self.bytes = 0
        self.evictions = 0
        self.invalidations = 0

    def __len__(self) -> int:
        return len(self._held)

    def take(self, partition: int, keys: Iterable[str]) -> dict[str, CustomerState]:
        """The held states of these keys (not yet checked against the clock: see `valid`)."""
        if partition not in self._seqs:
            return {}
        now = time.monotonic()
        out: dict[str, CustomerState] = {}
        held = self._held
        for key in keys:
            entry = held.get((partition, key))
            if entry is None:
                continue
            if now - entry.written_at >= self._max_age:
                self._remove((partition, key))  # it may have expired in Redis
                continue
            held.move_to_end((partition, key))
            out[key] = entry.state
        return out

    def valid(self, partition: int, clock: PartitionClock) -> bool:
        """Whether Redis' clock (read now) shows this worker's last commit of the partition;
        drops the partition's states when it does not."""
        seq = self._seqs.get(partition)
        if seq is None:
            return False
        if clock.seq == seq and clock.writer == self.token:
            return True
        self.drop([partition])
        return False

    def committed(self, partition: int, seq: str, states: Mapping[str, CustomerState | None],
                  sizes: Mapping[str, int], written_at: float) -> None:
        """This worker committed the partition, moving its clock to `seq`, with these states
        (None: deleted) whose JSON had these sizes."""
        self._seqs[partition] = seq
        held = self._held
        for key, state in states.items():
            name = (partition, key)
            if name in held:
                self._remove(name)
            if state is None or key.startswith(UNIDENTIFIED):
                # An unidentified caller's one contact is rarely touched again: kept, it
                # would push out customers who call again.
                continue
            size = sizes.get(key, 0) * PYTHON_BYTES_PER_JSON_BYTE
            if size > self.max_bytes:
                continue
            held[name] = _Held(state, size, written_at)
            self.bytes += size
        while self.bytes > self.max_bytes and held:
            name, _ = next(iter(held.items()))
            self._remove(name)
            self.evictions += 1

    def discard(self, partition: int, keys: Iterable[str]) -> None:
        """Forget these states of the partition (they may differ from what Redis holds)."""
        for key in keys:
            if (partition, key) in self._held:
                self._remove((partition, key))

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget everything held of these partitions."""
        gone = {p for p in partitions if p in self._seqs}
        if not gone:
            return
        self.invalidations += len(gone)
        for p in gone:
            del self._seqs[p]
        for name in [name for name in self._held if name[0] in gone]:
            self._remove(name)

    def partitions(self) -> list[int]:
        return sorted(self._seqs)

    def _remove(self, name: tuple[int, str]) -> None:
        entry = self._held.pop(name)
        self.bytes -= entry.size
