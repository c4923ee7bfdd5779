"""GET /api/v1/customers/at-risk: the at-risk work list of a callback or retention team.

The list is kept by the workers as they settle customers (domain/value.py): per partition a
hash of entries and one sorted set per order. A page reads the first `offset + limit` of each
partition's sorted set, merges them and reads only the entries shown: its cost grows with the
page, not with the number of customers. With `segment`, each partition's set is read a chunk at
a time until enough entries of that segment were found.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import faust
import orjson
from aiohttp import web

from service.adapters.http_ranges import checked_names, json_reply
from service.adapters.redis_state import RedisState
from service.domain.engine import rfc3339
from service.domain.partition import clock_summary
from service.domain.policy import Policy
from service.domain.value import ORDERS

AT_RISK = "/api/v1/customers/at-risk"
DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET = 50, 500, 10_000
SEGMENT_CHUNK = 200  # work-list members read per partition and round with `segment`
MAX_SEGMENT_LENGTH = 128


def at_risk_query(pairs: Sequence[tuple[str, str]]) -> tuple[int, int, str, str | None] | str:
    """(limit, offset, order, segment) from the query's pairs, or the message of a 400."""
    params = checked_names(pairs, ("limit", "offset", "order", "segment"))
    if isinstance(params, str):
        return params
    numbers = []
    for name, default, high in (("limit", DEFAULT_LIMIT, MAX_LIMIT),
                                ("offset", 0, MAX_OFFSET)):
        text = params.get(name, str(default))
        low = 1 if name == "limit" else 0
        if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
            return f"'{name}' must be a whole number from {low} to {high}, got {text[:20]!r}"
        numbers.append(int(text))
    order = params.get("order", "value")
    if order not in ORDERS:
        return f"'order' must be one of {', '.join(ORDERS)}, got {order[:20]!r}"
    segment = params.get("segment")
    if segment is not None and not 1 <= len(segment) <= MAX_SEGMENT_LENGTH:
        return f"'segment' must be 1 to {MAX_SEGMENT_LENGTH} characters, got {len(segment)}"
    return numbers[0], numbers[1], order, segment


Ranked = tuple[float, str, int]  # (score in the order, customer_id, partition)


def page_of(ranked: list[Ranked], offset: int, limit: int) -> list[Ranked]:
    """The page of the merged list: ascending score, ties by customer_id."""
    ranked.sort(key=lambda r: (r[0], r[1]))
    return ranked[offset:offset + limit]


async def read_page(store: RedisState, partitions: int, order: str, offset: int, limit: int,
                    segment: str | None, gate: asyncio.Semaphore
                    ) -> tuple[list[dict[str, Any]], int | None]:
    """The page's entries, and how many customers the unfiltered list holds (None with
    `segment`: the caller counts those from the clocks)."""
    need = offset + limit
    if segment is None:
        async with gate:
            pages = await store.read_at_risk({p: (0, need - 1) for p in range(partitions)},
                                             order)
        ranked = [(score, cid, p) for p, (members, _) in pages.items()
                  for cid, score in members]
        chosen = page_of(ranked, offset, limit)
        wanted: dict[int, list[str]] = {}
        for _, cid, p in chosen:
            wanted.setdefault(p, []).append(cid)
        async with gate:
            raw = await store.read_risk_entries(wanted)
        found = {(p, cid): entry for p, ids in wanted.items()
                 for cid, entry in zip(ids, raw[p], strict=True)}
        entries = [found.get((p, cid)) for _, cid, p in chosen]
        return [orjson.loads(e) for e in entries if e is not None], sum(
            n for _, n in pages.values())
    matched: list[tuple[float, str, int, bytes]] = []
    found_in: dict[int, int] = dict.fromkeys(range(partitions), 0)
    cursor = 0
    open_parts = set(range(partitions))
    while open_parts:
        ranges = {p: (cursor, cursor + SEGMENT_CHUNK - 1) for p in sorted(open_parts)}
        async with gate:
            pages = await store.read_at_risk(ranges, order)
        ids = {p: [cid for cid, _ in members] for p, (members, _) in pages.items()}
        async with gate:
            raw = await store.read_risk_entries(ids)
        for p, (members, _) in pages.items():
            for (cid, score), entry in zip(members, raw[p], strict=True):
                if entry is not None and orjson.loads(entry).get("segment") == segment:
                    matched.append((score, cid, p, entry))
                    found_in[p] += 1
            if len(members) < SEGMENT_CHUNK or found_in[p] >= need:
                open_parts.discard(p)
        cursor += SEGMENT_CHUNK
    matched.sort(key=lambda r: (r[0], r[1]))
    return [orjson.loads(r[3]) for r in matched[offset:offset + limit]], None


def install_value_routes(app: faust.App, served: Callable[[], Awaitable[tuple[RedisState,
                                                                                Policy]]],
                         partitions: Callable[[], int], reads: asyncio.Semaphore,
                         query_pairs: Callable[[str], list[tuple[str, str]] | str]) -> None:
    """Register GET /api/v1/customers/at-risk (before /api/v1/customers/{id}: a customer
    whose id is `at-risk` is not looked up by that path)."""

    async def at_risk(request: web.Request) -> web.Response:
        pairs = query_pairs(request.rel_url.raw_query_string)
        query = at_risk_query(pairs) if isinstance(pairs, list) else pairs
        if isinstance(query, str):
            return json_reply({"error": query}, 400)
        limit, offset, order, segment = query
        store, rules = await served()
        n = partitions()
        entries, total = await read_page(store, n, order, offset, limit, segment, reads)
        async with reads:
            clocks = await store.read_clocks(n)
        watermark = clock_summary(clocks)
        cents = _summed([c.value_at_risk for c in clocks.values()], segment)
        if total is None:
            total = _summed([c.at_risk_by_segment for c in clocks.values()], segment)
        return json_reply({
            "order": order, "segment": segment, "offset": offset, "limit": limit,
            "total": total, "value_at_risk": cents / 100,
            "next_offset": offset + limit if offset + limit < total else None,
            "customers": entries,
            "watermark": None if watermark is None else rfc3339(watermark),
            "policy_version": rules.version,
        })

    router = cast(Any, app.web).web_app.router
    router.add_get(AT_RISK, at_risk, allow_head=False)


def _summed(per_partition: Sequence[Mapping[str, int]], segment: str | None) -> int:
    """A clock count summed over partitions: of one segment, or of all."""
    if segment is not None:
        return sum(c.get(segment, 0) for c in per_partition)
    return sum(sum(c.values()) for c in per_partition)
