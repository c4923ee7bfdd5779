"""What every range endpoint of the API shares (`/api/v1/fcr`, `/cost`, `/containment`,
`/surveys`): summing counters over an hour-aligned range inside Redis, a week of hours per
call through the lookups' read gate, and the range's status (final, watermark, version)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from aiohttp import web

from service.adapters.redis_state import RedisState
from service.domain.engine import rfc3339
from service.domain.partition import clock_summary
from service.domain.policy import Policy

# Hours summed per call (one script per partition sums them inside Redis): each call goes
# through the read gate, so lookups and batches get Redis and the loop in between.
HOURS_PER_READ = 24 * 7


def checked_names(pairs: Sequence[tuple[str, str]], allowed: Iterable[str]
                  ) -> dict[str, str] | str:
    """The query's parameters by name, or the message of a 400: a name not `allowed`, or one
    given more than once (refused, not silently picked)."""
    names = [name for name, _ in pairs]
    unknown = set(names) - set(allowed)
    if unknown:
        return f"unknown parameter(s): {', '.join(repr(n[:40]) for n in sorted(unknown)[:5])}"
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        return f"parameter(s) given more than once: {', '.join(repeated)}"
    return dict(pairs)


def whole_number(text: str, low: int, high: int) -> int | None:
    """`text` as a whole number from `low` to `high` (ASCII digits only), else None."""
    if text.isascii() and text.isdigit() and low <= int(text) <= high:
        return int(text)
    return None


def json_reply(body: Any, status: int = 200, headers: dict[str, str] | None = None
               ) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                        headers=headers)


async def sum_over_range(store: RedisState, partitions: int, hours: Sequence[int],
                         fields: Sequence[str], reads: asyncio.Semaphore) -> list[int]:
    """Each counter field summed over the partitions and hours."""
    totals = [0] * len(fields)
    for i in range(0, len(hours), HOURS_PER_READ):
        async with reads:
            part = await store.sum_counters(partitions, hours[i:i + HOURS_PER_READ], fields)
        totals = [a + b for a, b in zip(totals, part, strict=True)]
    return totals


async def range_status(store: RedisState, partitions: int, end: int, rules: Policy,
                       reads: asyncio.Semaphore) -> dict[str, Any]:
    """`final` (no late event can change the range's figures any more: the watermark passed
    its end by the longest window), the service `watermark` and the `policy_version`."""
    async with reads:
        watermark = clock_summary(await store.read_clocks(partitions))
    return {"final": watermark is not None and watermark >= end + rules.max_window,
            "watermark": None if watermark is None else rfc3339(watermark),
            "policy_version": rules.version}
