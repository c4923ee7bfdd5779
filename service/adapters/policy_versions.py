"""Policy versions in Redis: which version readers serve, and the rules of each version.

Keys (`P` is CX_KEY_PREFIX):
- `P:active-policy` string: the policy version the readers (API, business gauges, wallboard)
  serve. Absent means the reader's own CX_POLICY_VERSION. `cx-stream rebuild` changes it with
  one atomic SET, so every reader goes from one version's figures to the other's at once;
- `P:policy:vN` string: the rules version N was first run with (JSON). A worker or a rebuild
  refuses to write version N with other rules: figures of one version never mix two rules;
- the state of version N lives under `state_prefix(P, N)` (`P` for 1, `P:vN` after).

A reader may keep what it read for `cache_seconds` (CX_POLICY_CACHE, 1 s in the worker): the
customer lookup then costs one Redis round trip, not two, and a switch reaches every reader
within that delay (each request still reads one version's state with that version's rules).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from service.adapters.redis_modes import RedisClient, unlink_each
from service.adapters.redis_state import RedisState
from service.config import state_prefix
from service.domain.policy import PerceptionPolicy, Policy, QueuePolicy

# Set the pointer only when it still holds what the caller saw (ARGV[1], "" for absent).
_SWITCH = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then return current end
redis.call('SET', KEYS[1], ARGV[2])
return ARGV[2]
"""


class PolicyMismatch(Exception):
    """The version was first run with other rules: new rules need a new version."""


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """The rules of a policy as plain JSON values (the version number is not part of it)."""
    perception = dataclasses.asdict(policy.perception)
    perception["segment_baselines"] = dict(policy.perception.segment_baselines)
    # Rules added later are left out at their defaults, so that a version stored before they
    # existed still matches the same rules.
    perception["segment_values"] = dict(policy.perception.segment_values)
    if not perception["segment_values"]:
        del perception["segment_values"]
    if perception["at_risk_on_complaint"]:
        del perception["at_risk_on_complaint"]
    return {
        "default": dataclasses.asdict(policy.default),
        "per_queue": {q: dataclasses.asdict(r) for q, r in sorted(policy.per_queue.items())},
        "allowed_lateness": policy.allowed_lateness,
        "perception": perception,
    }


def policy_from_dict(data: dict[str, Any], version: str) -> Policy:
    return Policy(
        default=QueuePolicy(**data["default"]),
        per_queue={q: QueuePolicy(**r) for q, r in data["per_queue"].items()},
        allowed_lateness=float(data["allowed_lateness"]),
        perception=PerceptionPolicy(**data["perception"]),
        version=version,
    )


def differences(stored: dict[str, Any], wanted: dict[str, Any], path: str = "") -> list[str]:
    """Readable differences between two rule sets, e.g. `default.repeat_window: 604800.0 ->
    259200.0`."""
    out: list[str] = []
    for key in sorted(set(stored) | set(wanted)):
        a, b = stored.get(key), wanted.get(key)
        name = f"{path}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


@dataclass(frozen=True)
class Served:
    """What a reader serves: one version's state and the rules it was computed with."""

    version: str
    state: RedisState
    policy: Policy


class PolicyVersions:
    def __init__(self, client: RedisClient, key_prefix: str, own: Policy,
                 make_state: Callable[[str], RedisState], *, cache_seconds: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._cached: tuple[float, Served] | None = None  # (read at, what was served)
        self.key_prefix = key_prefix
        self.own = own
        self._make_state = make_state
        self._states: dict[str, RedisState] = {}
        self._policies: dict[str, Policy] = {own.version: own}
        self._switch = client.register_script(_SWITCH)

    @property
    def pointer_key(self) -> str:
        return f"{self.key_prefix}:active-policy"

    def policy_key(self, version: str) -> str:
        return f"{self.key_prefix}:policy:v{version}"

    def prefix_of(self, version: str) -> str:
        return state_prefix(self.key_prefix, version)

    def state_of(self, version: str) -> RedisState:
        state = self._states.get(version)
        if state is None:
            state = self._states[version] = self._make_state(self.prefix_of(version))
        return state

    # -- readers ------------------------------------------------------------------------------

    async def active(self) -> str | None:
        """The version readers serve, or None when no version was ever made active."""
        raw = await self.client.get(self.pointer_key)
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    async def serving(self) -> Served:
        """The active version's state and rules: one GET (none while the version read less
        than `cache_seconds` ago is kept); the rules of a version are read once."""
        if self.cache_seconds > 0:
            now = self._clock()
            cached = self._cached
            if cached is not None and now - cached[0] < self.cache_seconds:
                return cached[1]
            served = await self._read_serving()
            if self._cached is None or self._cached[0] <= now:  # never replace a newer read
                self._cached = (now, served)
            return served
        return await self._read_serving()

    async def _read_serving(self) -> Served:
        version = await self.active() or self.own.version
        policy = self._policies.get(version)
        if policy is None:
            policy = await self.stored_policy(version)
            if policy is None:  # a version without stored rules: serve it with ours
                policy = dataclasses.replace(self.own, version=version)
            else:
                self._policies[version] = policy
        return Served(version, self.state_of(version), policy)

    async def stored_policy(self, version: str) -> Policy | None:
        raw = await self.client.get(self.policy_key(version))
        return None if raw is None else policy_from_dict(orjson.loads(raw), version)

    # -- writers ------------------------------------------------------------------------------

    async def claim(self, policy: Policy) -> None:
        """Record the rules of `policy.version`, or check they are the ones recorded.

        Raises PolicyMismatch when the version was first run with other rules."""
        wanted = policy_to_dict(policy)
        key = self.policy_key(policy.version)
        if await self.client.set(key, orjson.dumps(wanted), nx=True):
            return
        raw = await self.client.get(key)
        if raw is None:  # dropped meanwhile
            await self.client.set(key, orjson.dumps(wanted))
            return
        changed = differences(orjson.loads(raw), wanted)
        if changed:
            raise PolicyMismatch(
                f"policy version {policy.version} was first run with other rules "
                f"({'; '.join(changed)}); new rules need a new CX_POLICY_VERSION and "
                f"`cx-stream rebuild` (docs/rebuild.md)")

    async def activate_if_unset(self, version: str) -> None:
        """Make `version` the served one when no version was ever made active."""
        await self.client.set(self.pointer_key, version, nx=True)

    async def switch(self, expected: str | None, version: str) -> str | None:
        """Point the readers at `version` if the pointer still says `expected`; return what
        it says afterwards."""
        result = await self._switch(keys=[self.pointer_key], args=[expected or "", version])
        if result is None:
            return None
        return result.decode() if isinstance(result, bytes) else str(result)

    async def drop(self, version: str, *, batch: int = 500) -> int:
        """Delete version's state, contact views and recorded rules; return the keys deleted."""
        prefix = self.prefix_of(version)
        deleted = 0
        for pattern in (f"{prefix}:{{p*}}:*", f"{prefix}:contact:*"):
            keys: list[Any] = []
            async for key in self.client.scan_iter(match=pattern, count=1000):
                keys.append(key)
                if len(keys) >= batch:
                    deleted += await self._unlink(keys)
                    keys = []
            deleted += await self._unlink(keys)
        deleted += await self._unlink([self.policy_key(version)])
        return deleted

    async def _unlink(self, keys: list[Any]) -> int:
        return await unlink_each(self.client, keys)
