"""Redis side of the engine: partition clocks, customer states, hour counters, timers, outbox.

Keys (`P` is the key prefix, `{pN}` the input partition's Redis Cluster hash tag):
- `P:{pN}:clock` hash: `seq` (write guard), `w` (token of the worker that wrote `seq`, '' when
  it keeps no states in memory), `wm` (watermark), and per input topic `m:` newest event time,
  `o:` last applied offset, `n:` events applied; `e` the erasure generation last swept into
  it (`cx-stream erase`, service/adapters/erasure_store.py);
- `P:{pN}:s:c:<customer_id>` a customer's state; `P:{pN}:s:u:<contact_id>` the state of an
  unidentified caller's contact (JSON strings);
- `P:{pN}:timers` sorted set: state keys by the event time they next need attention;
- `P:{pN}:outbox` list: outputs committed but not yet published to Kafka;
- `P:{pN}:h:<hour>` hash: counters of the hour starting at epoch second `<hour>`, fields
  `<dimension>|<name>`;
- `P:contact:<contact_id>` hash: latest enriched view of a contact (`v` version, `j` JSON),
  stored by put_contact.lua, many per call (on a Redis Cluster, those of one slot).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError, NoScriptError, ResponseError

from service.adapters import redis_modes
from service.adapters.redis_modes import RedisClient, Script
from service.domain.records import CustomerState


def _lua(name: str) -> str:
    return resources.files("service.adapters").joinpath(f"lua/{name}").read_text()


def connect(url: str, **options: Any) -> RedisClient:
    """A client with timeouts: a dead Redis must fail fast so the worker can retry.

    The URL's scheme picks the mode: one server, a Redis Cluster or Sentinel (redis_modes).
    A single server's pool holds at most 64 connections; a request beyond them (a burst of
    HTTP lookups) waits up to 5 s for one instead of failing.
    `options`: TLS and ACL settings (service.adapters.connections.redis_options)."""
    return redis_modes.client_for(
        url, socket_timeout=10.0, socket_connect_timeout=5.0, health_check_interval=15,
        **options,
    )


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
    erasures: int = 0  # the erasure generation swept into this partition (`e`)

    @staticmethod
    def parse(raw: Mapping[Any, Any]) -> PartitionClock:
        clock = PartitionClock()
        for key, value in raw.items():
            name, text = _text(key), _text(value)
            if name == "seq":
                clock.seq = text
            elif name == "w":
                clock.writer = text
            elif name == "wm":
                clock.watermark = float(text)
            elif name.startswith("m:"):
                clock.newest[name[2:]] = float(text)
            elif name.startswith("o:"):
                clock.offsets[name[2:]] = int(text)
            elif name.startswith("n:"):
                clock.applied[name[2:]] = int(text)
            elif name == "at_risk":
                clock.at_risk = int(text)
            elif name == "noisy":
                clock.noisy = int(text)
            elif name == "e":
                clock.erasures = int(text)
            elif name in ("surveys_joined", "surveys", "transfers_joined", "transfers"):
                clock.joins[name] = int(text)
            elif name.startswith("band:"):
                clock.bands[int(name[5:])] = int(text)
        return clock


@dataclass
class PartitionData:
    """What a batch reads of one partition: states as Redis holds them (encoded), and states
    this worker kept in memory since its last commit of the partition (`held`)."""

    clock: PartitionClock
    states: dict[str, bytes | None]
    due: list[tuple[str, float]]
    outbox: list[bytes]
    due_until: float | None = None  # `due` holds every timer due before this, not the first
    held: dict[str, CustomerState] = field(default_factory=dict)

    def has(self, key: str) -> bool:
        return key in self.held or key in self.states

    def state(self, key: str) -> CustomerState | None:
        held = self.held.get(key)
        if held is not None:
            return held
        try:
            return decode_state(self.states.get(key))
        except Exception as exc:
            raise UndecodableState(key, exc) from exc


@dataclass
class PartitionCommit:
    seq: str
    states: dict[str, CustomerState | None]
    counters: dict[int, dict[str, int]]
    timers_add: dict[str, float]
    timers_remove: list[str]
    clock_fields: dict[str, str]
    outbox: list[bytes]
    clock_increments: dict[str, int] = field(default_factory=dict)
    writer: str = ""  # stored as the clock's `w`: the committing worker's token, if any
    # Set by RedisState.commit once committed: the clock's new seq, and each written state's
    # JSON size in bytes.
    committed_seq: str | None = None
    sizes: dict[str, int] = field(default_factory=dict)


class UndecodableState(Exception):
    """A stored state that cannot be decoded: only the events of that one customer are
    affected (the worker dead-letters them; the others move on)."""

    def __init__(self, key: str, cause: BaseException) -> None:
        super().__init__(f"the stored state {key!r} cannot be decoded "
                         f"({type(cause).__name__}: {cause})")
        self.key = key


class Conflict(Exception):
    """Another worker wrote the partition since it was read: read again and redo the batch."""


class RedisState:
    def __init__(self, client: RedisClient, key_prefix: str, *, state_ttl: float,
                 counter_ttl: float, contact_ttl: float) -> None:
        self.client = client
        self.prefix = key_prefix
        self._state_ttl_ms = int(state_ttl * 1000)
        self._counter_ttl_ms = int(counter_ttl * 1000)
        self._contact_ttl_ms = int(contact_ttl * 1000)
        self._commit: Script = client.register_script(_lua("commit_partition.lua"))
        self._put_contact: Script = client.register_script(_lua("put_contact.lua"))
        self._sum_counters: Script = client.register_script(_lua("sum_counters.lua"))
        self._scripts_loaded = False
        self._cluster = isinstance(client, RedisCluster)
        self.round_trips: list[float] = []
        self.timers_per_batch = 100  # the earliest; more are read when all of these fell due

    # -- key names ------------------------------------------------------------------------

    def key(self, partition: int, name: str) -> str:
        return f"{self.prefix}:{{p{partition}}}:{name}"

    def state_key(self, partition: int, state: str) -> str:
        return self.key(partition, f"s:{state}")

    def hour_key(self, partition: int, hour: int) -> str:
        return self.key(partition, f"h:{hour}")

    def contact_key(self, contact_id: str) -> str:
        return f"{self.prefix}:contact:{contact_id}"

    # -- reads ----------------------------------------------------------------------------

    async def _timed(self, pipe: Any) -> list[Any]:
        started = time.perf_counter()
        replies: list[Any] = await pipe.execute()
        self.round_trips.append(time.perf_counter() - started)
        return replies

    async def load(self, wanted: Mapping[int, Sequence[str]]) -> dict[int, PartitionData]:
        """Per partition: its clock, the given states, the earliest timers, the outbox."""
        pipe = self.client.pipeline(transaction=False)
        for partition, states in wanted.items():
            pipe.hgetall(self.key(partition, "clock"))
            pipe.zrangebyscore(self.key(partition, "timers"), "-inf", "+inf", start=0,
                               num=self.timers_per_batch, withscores=True)
            pipe.lrange(self.key(partition, "outbox"), 0, -1)
            self._queue_states(pipe, partition, states)
        replies = iter(await self._timed(pipe))
        out: dict[int, PartitionData] = {}
        for partition, states in wanted.items():
            clock = PartitionClock.parse(next(replies))
            due = [(_text(m), float(s)) for m, s in next(replies)]
            outbox = list(next(replies))
            out[partition] = PartitionData(clock, self._states_of(replies, states), due, outbox)
        return out

    def _queue_states(self, pipe: Any, partition: int, states: Sequence[str]) -> None:
        """Queue the reads of a partition's states: one MGET on one server (far less work for
        the client than a GET each); on a Cluster a GET each (its pipelines refuse MGET)."""
        if not states:
            return
        if self._cluster:
            for state in states:
                pipe.get(self.state_key(partition, state))
        else:
            pipe.mget([self.state_key(partition, state) for state in states])

    def _states_of(self, replies: Iterator[Any], states: Sequence[str]
                   ) -> dict[str, bytes | None]:
        if not states:
            return {}
        if self._cluster:
            return {state: next(replies) for state in states}
        return dict(zip(states, next(replies), strict=True))

    async def due_timers(self, bounds: Mapping[int, float]) -> dict[int, list[tuple[str, float]]]:
        """Every timer of each partition due before its bound (the new watermark)."""
        pipe = self.client.pipeline(transaction=False)
        for partition, bound in bounds.items():
            pipe.zrangebyscore(self.key(partition, "timers"), "-inf", f"({bound!r}",
                               withscores=True)
        replies = await self._timed(pipe)
        return {p: [(_text(m), float(s)) for m, s in reply]
                for p, reply in zip(bounds, replies, strict=True)}

    async def load_states(self, wanted: Mapping[int, Iterable[str]]
                          ) -> dict[int, dict[str, bytes | None]]:
        pipe = self.client.pipeline(transaction=False)
        order = [(p, list(states)) for p, states in wanted.items()]
        order = [(p, states) for p, states in order if states]
        for partition, states in order:
            self._queue_states(pipe, partition, states)
        replies = iter(await self._timed(pipe) if order else [])
        out: dict[int, dict[str, bytes | None]] = {p: {} for p in wanted}
        for partition, states in order:
            out[partition] = self._states_of(replies, states)
        return out

    async def read_state(self, partition: int, state: str) -> tuple[CustomerState | None,
                                                                     PartitionClock]:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.state_key(partition, state))
        pipe.hgetall(self.key(partition, "clock"))
        raw, clock = await pipe.execute()
        return decode_state(raw), PartitionClock.parse(clock)

    async def read_clocks(self, partitions: int) -> dict[int, PartitionClock]:
        pipe = self.client.pipeline(transaction=False)
        for partition in range(partitions):
            pipe.hgetall(self.key(partition, "clock"))
        return {p: PartitionClock.parse(raw) for p, raw in enumerate(await pipe.execute())}

    async def read_buckets_by_hour(self, partitions: int, hours: Sequence[int]
                                   ) -> dict[int, list[dict[str, int]]]:
        """Every counter of the given hours: per hour, one dict per partition that has any."""
        pipe = self.client.pipeline(transaction=False)
        order = [(p, h) for p in range(partitions) for h in hours]
        for partition, hour in order:
            pipe.hgetall(self.hour_key(partition, hour))
        out: dict[int, list[dict[str, int]]] = {}
        for (_, hour), raw in zip(order, await pipe.execute(), strict=True):
            if raw:
                out.setdefault(hour, []).append({_text(k): int(v) for k, v in raw.items()})
        return out

    async def read_contact(self, contact_id: str) -> bytes | None:
        raw = await self.client.hget(self.contact_key(contact_id), "j")
        return raw if isinstance(raw, bytes) or raw is None else raw.encode()

    async def read_counters(self, partitions: int, hours: Sequence[int],
                            fields: Sequence[str]) -> list[int]:
        """Each field summed over the partitions and hours."""
        pipe = self.client.pipeline(transaction=False)
        for partition in range(partitions):
            for hour in hours:
                pipe.hmget(self.hour_key(partition, hour), list(fields))
        totals = [0] * len(fields)
        for reply in await pipe.execute():
            for i, value in enumerate(reply):
                if value is not None:
                    totals[i] += int(value)
        return totals

    async def sum_counters(self, partitions: int, hours: Sequence[int],
                           fields: Sequence[str]) -> list[int]:
        """As read_counters, summed inside Redis (sum_counters.lua): one command per partition
        in one round trip, whatever the number of hours; Redis runs each script for about a
        microsecond per hour key."""
        for _ in range(3):
            pipe = self.client.pipeline(transaction=False)
            for partition in range(partitions):
                keys = [self.hour_key(partition, hour) for hour in hours]
                pipe.evalsha(self._sum_counters.sha, len(keys), *keys, *fields)
            replies = await pipe.execute(raise_on_error=False)
            if any(isinstance(reply, NoScriptError) for reply in replies):
                # First use, or Redis restarted: load it (on every node of a cluster), again.
                self._sum_counters.sha = await self.client.script_load(
                    self._sum_counters.script)
                continue
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            return [sum(int(reply[i]) for reply in replies) for i in range(len(fields))]
        raise ConnectionError("Redis keeps losing the counters script")

    # -- writes ---------------------------------------------------------------------------

    async def commit(self, commits: Mapping[int, PartitionCommit], attempt: int = 0
                     ) -> set[int]:
        """Run each partition's commit script, all in one round trip; return the conflicted."""
        if not self._scripts_loaded:
            await self._load_scripts()
        pipe = self.client.pipeline(transaction=False)
        order = list(commits)
        for partition in order:
            c = commits[partition]
            state_names = list(c.states)
            keys = [self.key(partition, "clock"), self.key(partition, "timers"),
                    self.key(partition, "outbox")]
            keys += [self.state_key(partition, s) for s in state_names]
            hour_index: dict[int, int] = {}
            for hour in c.counters:
                keys.append(self.hour_key(partition, hour))
                hour_index[hour] = len(keys)  # Lua indexes KEYS from 1
            ops = {
                "c": [[hour_index[h], name, n] for h, deltas in c.counters.items()
                      for name, n in deltas.items()],
                "ta": [[m, repr(s)] for m, s in c.timers_add.items()],  # "-inf" is valid
                "tr": c.timers_remove,
                "k": [v for kv in c.clock_fields.items() for v in kv],
                "ci": [[name, n] for name, n in c.clock_increments.items() if n],
                "w": c.writer,
            }
            args: list[Any] = [c.seq, len(state_names), self._state_ttl_ms,
                               self._counter_ttl_ms, orjson.dumps(ops)]
            sizes = c.sizes
            for name, s in c.states.items():
                if s is None:
                    args.append(b"")
                else:
                    encoded = encode_state(s)
                    sizes[name] = len(encoded)
                    args.append(encoded)
            args += c.outbox
            pipe.evalsha(self._commit.sha, len(keys), *keys, *args)
        replies = await self._timed_raising(pipe)
        conflicts = set()
        lost: list[int] = []
        for partition, reply in zip(order, replies, strict=True):
            if isinstance(reply, NoScriptError):
                lost.append(partition)  # not run: Redis restarted and lost its scripts
            elif isinstance(reply, ResponseError):
                if "CONFLICT" in str(reply):
                    conflicts.add(partition)
                else:
                    raise reply
            else:
                commits[partition].committed_seq = _text(reply)
        if lost:
            self._scripts_loaded = False
            if attempt >= 3:
                raise ConnectionError("Redis keeps losing the commit script")
            conflicts |= await self.commit({p: commits[p] for p in lost}, attempt + 1)
        return conflicts

    async def _load_scripts(self) -> None:
        """Load the Lua scripts (at the first write, and again when Redis lost them), so that
        pipelines call EVALSHA directly: redis-py would otherwise ask SCRIPT EXISTS before
        every pipeline, one more round trip per call."""
        for script in (self._commit, self._put_contact):
            script.sha = await self.client.script_load(script.script)
        self._scripts_loaded = True

    async def _timed_raising(self, pipe: Any) -> list[Any]:
        started = time.perf_counter()
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        self.round_trips.append(time.perf_counter() - started)
        return replies

    async def finish_outbox(self, published: Mapping[int, int],
                            contacts: Sequence[tuple[str, int, bytes]], attempt: int = 0,
                            *, erased: Sequence[str] = ()) -> None:
        """Store the contact views, delete those of erased customers' contacts and drop the
        published outbox items, in one round trip."""
        if not contacts and not erased and not any(published.values()):
            return
        if contacts and not self._scripts_loaded:
            await self._load_scripts()
        pipe = self.client.pipeline(transaction=False)
        groups = self._contact_groups(contacts)
        for group in groups:
            keys = [self.contact_key(contact_id) for contact_id, _, _ in group]
            args: list[Any] = [v for _, version, view in group for v in (version, view)]
            pipe.evalsha(self._put_contact.sha, len(keys), *keys, *args, self._contact_ttl_ms)
        for contact_id in erased:
            pipe.execute_command("UNLINK", self.contact_key(contact_id))  # as on a Cluster
        for partition, n in published.items():
            if n:
                pipe.ltrim(self.key(partition, "outbox"), n, -1)
        replies = await self._timed_raising(pipe)
        lost = [c for group, reply in zip(groups, replies, strict=False)
                if isinstance(reply, NoScriptError) for c in group]
        for reply in replies:
            if isinstance(reply, ResponseError) and not isinstance(reply, NoScriptError):
                raise reply
        if lost:  # storing a view again is harmless (the newer version wins)
            self._scripts_loaded = False
            if attempt >= 3:
                raise ConnectionError("Redis keeps losing the contact script")
            await self.finish_outbox({}, lost, attempt + 1)

    def _contact_groups(self, contacts: Sequence[tuple[str, int, bytes]]
                        ) -> list[list[tuple[str, int, bytes]]]:
        """Contacts in groups of up to 500 stored by one script call: on a Redis Cluster, the
        keys of one call must share a slot."""
        if self._cluster:
            by_slot: dict[int, list[tuple[str, int, bytes]]] = {}
            for c in contacts:
                by_slot.setdefault(key_slot(self.contact_key(c[0]).encode()), []).append(c)
            slots = list(by_slot.values())
        else:
            slots = [list(contacts)]
        return [group[i:i + 500] for group in slots for i in range(0, len(group), 500)]

    async def ping(self) -> bool:
        return bool(await self.client.ping())


def outbox_item(kind: str, key: str | None, version: int, value: bytes) -> bytes:
    """An outbox entry: a small JSON header line, then the value bytes as they will be sent."""
    return orjson.dumps([kind, key, version]) + b"\n" + value


def parse_outbox_item(item: bytes) -> tuple[str, str | None, int, bytes]:
    header, _, value = item.partition(b"\n")
    kind, key, version = orjson.loads(header)
    return kind, key, version, value


def encode_state(state: CustomerState) -> bytes:
    return orjson.dumps(state.to_dict())


def decode_state(raw: bytes | None) -> CustomerState | None:
    if raw is None:
        return None
    return CustomerState.from_dict(orjson.loads(raw))
