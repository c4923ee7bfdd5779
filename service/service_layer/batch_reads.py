"""What a batch reads through the store before and while it applies its events: the states of
its customers (from this worker's memory when the partition's clock proves them current), the
states of contacts that may be held apart from a noisy customer, and the timers that fall due
at the new watermark with their states."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from service.domain.engine import state_key
from service.domain.events import ContactEvent
from service.domain.partition import PartitionData
from service.domain.records import CustomerState
from service.domain.storage_names import unidentified_state
from service.service_layer.dead_letters import InputMessage
from service.service_layer.ports import PartitionStore
from service.service_layer.state_cache import StateCache

Valid = Mapping[int, Sequence[tuple[InputMessage, ContactEvent]]]


@dataclass
class Loaded:
    """A batch's first read: per partition what the store holds, and the states this worker
    holds in memory (not checked against the clock yet: `BatchReads.use_held`)."""

    data: dict[int, PartitionData]
    held: dict[int, dict[str, CustomerState]]
    wanted: int  # states asked of the store


@dataclass
class StateReads:
    """How many customer states a batch found in memory and how many it read from the store."""

    memory: int = 0
    store: int = 0


class BatchReads:
    def __init__(self, store: PartitionStore, cache: StateCache | None, max_contacts: int
                 ) -> None:
        self._store = store
        self._cache = cache
        self._max_contacts = max_contacts

    async def load(self, valid: Valid) -> Loaded:
        """Each partition's clock, timers and outbox, and the states of the batch's customers
        that this worker does not hold in memory."""
        cache = self._cache
        wanted: dict[int, list[str]] = {}
        held: dict[int, dict[str, CustomerState]] = {}
        for p, items in valid.items():
            keys = list(dict.fromkeys([state_key(e) for _, e in items]))
            held[p] = cache.take(p, keys) if cache is not None else {}
            wanted[p] = [k for k in keys if k not in held[p]] if held[p] else keys
        return Loaded(await self._store.load(wanted), held, sum(map(len, wanted.values())))

    async def use_held(self, valid: Valid, loaded: Loaded) -> tuple[set[int], StateReads]:
        """Use the held states of the partitions whose clock shows this worker's last commit;
        read the others' from the store. The partitions whose held states are current."""
        cache = self._cache
        data, held = loaded.data, loaded.held
        current: set[int] = set()
        if cache is None:
            return current, StateReads(0, loaded.wanted)
        stale: dict[int, list[str]] = {}
        for p in valid:
            if cache.valid(p, data[p].clock):
                current.add(p)
                data[p].held = held[p]
            elif held[p]:  # another writer since this worker's last commit: read them
                stale[p] = list(held[p])
        if stale:
            for partition, raw in (await self._store.load_states(stale)).items():
                data[partition].states.update(raw)
        found = sum(len(data[p].held) for p in current)
        return current, StateReads(found, sum(map(len, held.values())) - found + loaded.wanted)

    async def held_apart(self, valid: Valid, data: dict[int, PartitionData]) -> None:
        """Read the states of contacts that may be held apart from a noisy customer in this
        batch (engine.overflows): those of customers that are noisy, or could become so."""
        limit = self._max_contacts
        if limit <= 0:
            return
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
                        k for k in map(unidentified_state, fresh) if not d.has(k))
        if missing:
            for partition, raw_states in (await self._store.load_states(missing)).items():
                data[partition].states.update(raw_states)

    async def due(self, data: dict[int, PartitionData], marks: Mapping[int, float | None],
                  current: set[int]) -> None:
        """Read the timers due before each partition's watermark and the states they name
        that are not read yet (`current`: partitions whose held states may be used)."""
        # The first read brings only the earliest timers; when all of them fell due at the
        # new watermark there may be more: read every due one.
        more_due: dict[int, float] = {}
        for p, wm in marks.items():
            d = data[p]
            if (wm is not None and d.due and len(d.due) >= self._store.timers_per_batch
                    and d.due[-1][1] < wm and (d.due_until is None or wm > d.due_until)):
                more_due[p] = wm
        if more_due:
            for partition, due in (await self._store.due_timers(more_due)).items():
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
            more = await self._store.load_states(missing)
            for partition, states in more.items():
                data[partition].states.update(states)
