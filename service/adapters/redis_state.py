"""Redis side of the engine: partition clocks, customer states, hour counters, timers, outbox.

Keys (named in service/domain/storage_names.py; `P` is the key prefix, `{pN}` the input
partition's Redis Cluster hash tag):
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
- `P:{pN}:risk` hash: the at-risk work list, customer_id -> entry JSON; `P:{pN}:risk:v`,
  `risk:s`, `risk:t` sorted sets of its customer_ids by value (minus cents), score, since;
- `P:{pN}:recent` sorted set: the latest contacts, `[queue, contact_id]` JSON by occurred_at
  (the last hour of event time before the watermark, at most 5,000);
- `P:contact:<contact_id>` hash: latest enriched view of a contact (`v` version, `j` JSON),
  stored by put_contact.lua, many per call (on a Redis Cluster, those of one slot).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib import resources
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError, NoScriptError, ResponseError

from service.adapters import redis_modes
from service.adapters.codec import decode_state, encode_state
from service.adapters.failures import redis_transient
from service.adapters.redis_modes import RedisClient, Script
from service.domain import storage_names as names
from service.domain.partition import PartitionClock, PartitionCommit, PartitionData
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
        self._sum_prefixed: Script = client.register_script(_lua("sum_prefixed.lua"))
        self._scripts_loaded = False
        self._cluster = isinstance(client, RedisCluster)
        self.round_trips: list[float] = []
        self.timers_per_batch = 100  # the earliest; more are read when all of these fell due

    # -- key names ------------------------------------------------------------------------

    def key(self, partition: int, name: str) -> str:
        return names.partition_key(self.prefix, partition, name)

    def state_key(self, partition: int, state: str) -> str:
        return names.state_redis_key(self.prefix, partition, state)

    def hour_key(self, partition: int, hour: int) -> str:
        return names.hour_redis_key(self.prefix, partition, hour)

    def contact_key(self, contact_id: str) -> str:
        return names.contact_view_key(self.prefix, contact_id)

    def risk_keys(self, partition: int) -> list[str]:
        """The at-risk work list's hash, then its sorted sets by value, score and since."""
        return [self.key(partition, names.RISK),
                *(self.key(partition, name) for name in names.RISK_ORDERS.values())]

    # -- what the ingest use case asks of its store (service_layer/ports.PartitionStore) ----

    def encode(self, state: CustomerState) -> bytes:
        return encode_state(state)

    def take_round_trips(self) -> list[float]:
        taken, self.round_trips = self.round_trips, []
        return taken

    def is_transient(self, exc: BaseException) -> bool:
        return redis_transient(exc)

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
            pipe.hgetall(self.key(partition, names.CLOCK))
            pipe.zrangebyscore(self.key(partition, names.TIMERS), "-inf", "+inf", start=0,
                               num=self.timers_per_batch, withscores=True)
            pipe.lrange(self.key(partition, names.OUTBOX), 0, -1)
            self._queue_states(pipe, partition, states)
        replies = iter(await self._timed(pipe))
        out: dict[int, PartitionData] = {}
        for partition, states in wanted.items():
            clock = PartitionClock.parse(next(replies))
            due = [(_text(m), float(s)) for m, s in next(replies)]
            outbox = list(next(replies))
            out[partition] = PartitionData(clock, self._states_of(replies, states), due, outbox,
                                           decode=decode_state)
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
            pipe.zrangebyscore(self.key(partition, names.TIMERS), "-inf", f"({bound!r}",
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
        pipe.hgetall(self.key(partition, names.CLOCK))
        raw, clock = await pipe.execute()
        return None if raw is None else decode_state(raw), PartitionClock.parse(clock)

    async def read_clocks(self, partitions: int) -> dict[int, PartitionClock]:
        pipe = self.client.pipeline(transaction=False)
        for partition in range(partitions):
            pipe.hgetall(self.key(partition, names.CLOCK))
        return {p: PartitionClock.parse(raw) for p, raw in enumerate(await pipe.execute())}

    async def read_at_risk(self, ranges: Mapping[int, tuple[int, int]], order: str
                           ) -> dict[int, tuple[list[tuple[str, float]], int]]:
        """Per partition: the work list's customers from rank `start` to `stop` (inclusive)
        in `order` (names.RISK_ORDERS), with their scores, and how many it holds."""
        pipe = self.client.pipeline(transaction=False)
        key = names.RISK_ORDERS[order]
        for partition, (start, stop) in ranges.items():
            pipe.zrange(self.key(partition, key), start, stop, withscores=True)
            pipe.zcard(self.key(partition, key))
        replies = iter(await pipe.execute())
        out: dict[int, tuple[list[tuple[str, float]], int]] = {}
        for partition in ranges:
            members = [(_text(m), float(s)) for m, s in next(replies)]
            out[partition] = (members, int(next(replies)))
        return out

    async def read_risk_entries(self, wanted: Mapping[int, Sequence[str]]
                                ) -> dict[int, list[bytes | None]]:
        """The work-list entries of the given customers, per partition."""
        pipe = self.client.pipeline(transaction=False)
        order = [(p, ids) for p, ids in wanted.items() if ids]
        for partition, ids in order:
            pipe.hmget(self.key(partition, names.RISK), list(ids))
        replies = await pipe.execute() if order else []
        out: dict[int, list[bytes | None]] = {p: [] for p in wanted}
        for (partition, _), reply in zip(order, replies, strict=True):
            out[partition] = list(reply)
        return out

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

    async def read_recent(self, partitions: int, since: float
                          ) -> list[tuple[float, str, str]]:
        """The latest contacts of every partition from event time `since` on: (occurred_at,
        queue, contact_id), newest first."""
        pipe = self.client.pipeline(transaction=False)
        for partition in range(partitions):
            pipe.zrevrangebyscore(self.key(partition, names.RECENT), "+inf", repr(since),
                                  withscores=True)
        out: list[tuple[float, str, str]] = []
        for reply in await pipe.execute():
            for member, score in reply:
                try:
                    queue, contact_id = orjson.loads(member)
                except (orjson.JSONDecodeError, ValueError, TypeError):
                    continue  # not written by this version: left out
                out.append((float(score), str(queue), str(contact_id)))
        out.sort(key=lambda r: (-r[0], r[2]))
        return out

    async def read_contacts(self, contact_ids: Sequence[str]) -> list[bytes | None]:
        """The stored views of the contacts (None where there is none), in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for contact_id in contact_ids:
            pipe.hget(self.contact_key(contact_id), "j")
        replies = await pipe.execute() if contact_ids else []
        return [r if isinstance(r, bytes) or r is None else r.encode() for r in replies]

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

    async def sum_prefixed(self, partitions: int, hours: Sequence[int],
                           prefixes: Sequence[str], counters: Sequence[str]) -> dict[str, int]:
        """Every counter field of the given hours whose dimension starts with one of
        `prefixes` and whose name is in `counters`, summed over the partitions and hours
        inside Redis (sum_prefixed.lua, one command per partition in one round trip): for
        readers that do not know the names in advance (repeat drivers, the agents table)."""
        patterns = ["".join("\\" + ch if ch in "*?[]\\^" else ch for ch in prefix) + "*"
                    for prefix in prefixes]
        args = [str(len(patterns)), *patterns, *counters]
        for _ in range(3):
            pipe = self.client.pipeline(transaction=False)
            for partition in range(partitions):
                keys = [self.hour_key(partition, hour) for hour in hours]
                pipe.evalsha(self._sum_prefixed.sha, len(keys), *keys, *args)
            replies = await pipe.execute(raise_on_error=False)
            if any(isinstance(reply, NoScriptError) for reply in replies):
                self._sum_prefixed.sha = await self.client.script_load(
                    self._sum_prefixed.script)
                continue
            totals: dict[str, int] = {}
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
                for i in range(0, len(reply), 2):
                    field = _text(reply[i])
                    totals[field] = totals.get(field, 0) + int(reply[i + 1])
            return totals
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
            keys = [self.key(partition, names.CLOCK), self.key(partition, names.TIMERS),
                    self.key(partition, names.OUTBOX)]
            keys += [self.state_key(partition, s) for s in state_names]
            hour_index: dict[int, int] = {}
            for hour in c.counters:
                keys.append(self.hour_key(partition, hour))
                hour_index[hour] = len(keys)  # Lua indexes KEYS from 1
            ops: dict[str, Any] = {
                "c": [[hour_index[h], *(v for kv in deltas.items() for v in kv)]
                      for h, deltas in c.counters.items() if deltas],
                # score then member, as ZADD takes them; "-inf" is a valid score
                "ta": [v for m, s in c.timers_add.items() for v in (repr(s), m)],
                "tr": c.timers_remove,
                "k": [v for kv in c.clock_fields.items() for v in kv],
                "ci": [[name, n] for name, n in c.clock_increments.items() if n],
                "w": c.writer,
            }
            if c.risk_put or c.risk_remove:
                ops["ri"] = len(keys) + 1
                keys += self.risk_keys(partition)
                ops["rd"] = c.risk_remove
                ops["rp"] = [[cid, entry.decode(), *map(repr, scores)]
                             for cid, (entry, scores) in c.risk_put.items()]
            if c.recent_add:
                keys.append(self.key(partition, names.RECENT))
                ops["li"] = len(keys)
                ops["la"] = [v for member, t in c.recent_add.items()
                             for v in (repr(t), member.decode())]
                ops["lb"] = "-inf" if c.recent_before is None else f"({c.recent_before!r}"
                ops["lk"] = names.RECENT_PER_PARTITION
            args: list[Any] = [c.seq, len(state_names), self._state_ttl_ms,
                               self._counter_ttl_ms, orjson.dumps(ops)]
            sizes, ready = c.sizes, c.encoded
            for name, s in c.states.items():
                if s is None:
                    args.append(b"")
                else:
                    encoded = ready.get(name) or encode_state(s)
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
                pipe.ltrim(self.key(partition, names.OUTBOX), n, -1)
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
