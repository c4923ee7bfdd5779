"""Redis side of erasure: the suppression list, the per-partition sweep, the audit trail.

Keys (`P` is CX_KEY_PREFIX; the `{erased}` hash tag keeps them on one Redis Cluster slot):
- `P:{erased}:ids` set: HMAC-SHA256 (CX_ERASURE_KEY) of each erased customer id, hex; never
  the id itself;
- `P:{erased}:gen` integer: the erasure generation, raised by every `cx-stream erase` before
  it sweeps; each swept partition clock stores it as `e`, so a worker reading a clock with a
  higher `e` than its list's reads the list again before applying anything;
- `P:{erased}:key` the fingerprint of the key the list was made with (a worker or an erase
  with another key refuses to go on: it could not recognise the ids);
- `P:{erased}:audit` list: one JSON line per `cx-stream erase` run (who, when, how many).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
from redis.exceptions import NoScriptError

from service.adapters.redis_modes import RedisClient, Script, unlink_each
from service.adapters.redis_state import RedisState
from service.config import ConfigError, Settings
from service.domain import storage_names as names
from service.domain.erasure import names_customer


class ErasureKeyError(Exception):
    """The erasure key is missing or is not the one the suppression list was made with."""


def erasure_key(settings: Settings) -> bytes | None:
    """The key from CX_ERASURE_KEY or the first line of CX_ERASURE_KEY_FILE (None: neither)."""
    if settings.erasure_key_file:
        try:
            with open(settings.erasure_key_file, encoding="utf-8") as f:
                text = f.readline().strip()
        except OSError as exc:
            raise ConfigError(f"CX_ERASURE_KEY_FILE: cannot read {settings.erasure_key_file!r} "
                              f"({exc.strerror})") from None
        if len(text) < 16:
            raise ConfigError("CX_ERASURE_KEY_FILE: the key must have at least 16 characters")
        return text.encode()
    return settings.erasure_key.encode() if settings.erasure_key else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Swept:
    """What the sweep of one partition found."""

    states: int
    timers: int
    outputs: int
    contacts: list[str] = field(default_factory=list)


class ErasureStore:
    def __init__(self, client: RedisClient, key_prefix: str) -> None:
        self.client = client
        self.prefix = key_prefix
        self._sweep: Script = client.register_script(
            resources.files("service.adapters").joinpath("lua/erase_partition.lua").read_text())
        self._loaded = False

    def key(self, name: str) -> str:
        return f"{self.prefix}:{{erased}}:{name}"

    # -- the suppression list ---------------------------------------------------------------

    async def read(self) -> tuple[int, frozenset[bytes], str | None]:
        """The generation, the digests and the key fingerprint, read together."""
        # One slot, one connection: the commands run in this order, so the list read is at
        # least as new as the generation read before it.
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.key("gen"))
        pipe.smembers(self.key("ids"))
        pipe.get(self.key("key"))
        gen, members, fingerprint = await pipe.execute()
        digests = frozenset(bytes.fromhex(_text(m)) for m in members)
        return (int(gen or 0), digests,
                None if fingerprint is None else _text(fingerprint))

    async def claim_key(self, fingerprint: str) -> bool:
        """Record the key's fingerprint, or check it is the recorded one."""
        if await self.client.set(self.key("key"), fingerprint, nx=True):
            return True
        stored = await self.client.get(self.key("key"))
        return stored is None or _text(stored) == fingerprint

    async def add(self, digests: Sequence[bytes]) -> tuple[list[bool], int]:
        """Add the digests; which were new, and the new erasure generation."""
        pipe = self.client.pipeline(transaction=False)  # in order: the ids, then the generation
        for d in digests:
            pipe.sadd(self.key("ids"), d.hex())
        pipe.incr(self.key("gen"))
        replies = await pipe.execute()
        return [bool(r) for r in replies[:-1]], int(replies[-1])

    async def audit(self, line: dict[str, Any]) -> None:
        await self.client.rpush(self.key("audit"), orjson.dumps(line))

    # -- the sweep --------------------------------------------------------------------------

    async def sweep(self, state: RedisState, partitions: int, generation: int,
                    ids: Sequence[str], known: Iterable[str]) -> list[Swept]:
        """Erase the customers from every partition of one policy version's state."""
        known = list(known)
        if not self._loaded:  # so that the pipeline can call EVALSHA directly
            self._sweep.sha = await self.client.script_load(self._sweep.script)
            self._loaded = True
        pipe = self.client.pipeline(transaction=False)
        for partition in range(partitions):
            keys = [state.key(partition, names.CLOCK), state.key(partition, names.TIMERS),
                    state.key(partition, names.OUTBOX)]
            keys += [state.state_key(partition, names.customer_state(c)) for c in ids]
            keys += state.risk_keys(partition)
            keys.append(state.key(partition, names.RECENT))
            pipe.evalsha(self._sweep.sha, len(keys), *keys, generation, len(ids), *ids, *known)
        try:
            replies = await pipe.execute()
        except NoScriptError:  # Redis restarted meanwhile: the sweep is safe to run again
            self._loaded = False
            return await self.sweep(state, partitions, generation, ids, known)
        return [Swept(int(r[0]), int(r[1]), int(r[2]), [_text(c) for c in r[3:]])
                for r in replies]

    async def contacts_of(self, prefix: str, ids: set[str], *, batch: int = 500
                          ) -> set[str]:
        """Contact ids whose stored view (under the state prefix) names one of the customers:
        a scan of every view, one HGET per view, pipelined."""
        found: set[str] = set()
        head = f"{prefix}:contact:"
        keys: list[Any] = []

        async def check(names: list[Any]) -> None:
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.hget(name, "j")
            for name, raw in zip(names, await pipe.execute(), strict=True):
                if raw is None:
                    continue
                try:
                    view = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(view, dict) and names_customer(view, ids):
                    found.add(_text(name)[len(head):])

        async for name in self.client.scan_iter(match=f"{glob_escape(head)}*", count=1000):
            keys.append(name)
            if len(keys) >= batch:
                await check(keys)
                keys = []
        if keys:
            await check(keys)
        return found

    async def unlink(self, keys: Sequence[str]) -> int:
        """Delete the keys (of many hash slots); how many existed."""
        return await unlink_each(self.client, keys)


def glob_escape(text: str) -> str:
    """`text` with the glob characters of SCAN MATCH escaped."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)

