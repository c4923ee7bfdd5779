"""GET /api/v1/agents: each agent's FCR with its Wilson interval, against the centre's FCR for
the same queues (domain/agents, docs/api.md#agents)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust
from aiohttp import web

from service.adapters.http_ranges import json_reply
from service.adapters.redis_state import RedisState
from service.domain.agents import NAMES, agent_rows, closed_fcr, table_inputs
from service.domain.counters import HOUR
from service.domain.engine import rfc3339
from service.domain.partition import clock_summary
from service.domain.policy import Policy
from service.domain.storage_names import QUEUE_AGENT, queue_agent_dimension

Served = Callable[[], Awaitable[tuple[RedisState, Policy]]]
# Parses a query's (name, value) pairs into (from, to, dimension) or a 400's message.
QueryParser = Callable[[list[tuple[str, str]]], tuple[int, int, str] | str]
PairsParser = Callable[[str], list[tuple[str, str]] | str]
# An agents request reads a day of hours per round trip: the script reads whole hour hashes.
HOURS_PER_READ = 24
DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET = 100, 1000, 1_000_000
QUEUE_PER_SLOT = 4


def paging(pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], int, int] | str:
    """The pairs without `limit` and `offset`, and their values; or a 400's message."""
    rest = [(n, v) for n, v in pairs if n not in ("limit", "offset")]
    values = {"limit": DEFAULT_LIMIT, "offset": 0}
    bounds = {"limit": (1, MAX_LIMIT), "offset": (0, MAX_OFFSET)}
    for name in ("limit", "offset"):
        given = [v for n, v in pairs if n == name]
        if len(given) > 1:
            return f"parameter(s) given more than once: {name}"
        if given:
            low, high = bounds[name]
            text = given[0]
            if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
                return f"'{name}' must be an integer from {low} to {high}: {text[:20]!r}"
            values[name] = int(text)
    return rest, values["limit"], values["offset"]


def install_agents_routes(app: faust.App, served: Served, partitions: Callable[[], int],
                          reads: asyncio.Semaphore, parse_pairs: PairsParser,
                          parse_query: QueryParser, *, min_contacts: int,
                          max_at_once: int = 2) -> None:
    """Register GET /api/v1/agents. At most `max_at_once` requests read at once (a few more
    wait, then 429), a day of hours per round trip through the lookups' gate `reads`."""
    slots = asyncio.Semaphore(max_at_once)
    inside = 0

    async def agents(request: web.Request) -> web.Response:
        nonlocal inside
        pairs = parse_pairs(request.rel_url.raw_query_string)
        if isinstance(pairs, str):
            return json_reply({"error": pairs}, 400)
        paged = paging(pairs)
        if isinstance(paged, str):
            return json_reply({"error": paged}, 400)
        rest, limit, offset = paged
        query = parse_query(rest)
        if isinstance(query, str):
            return json_reply({"error": query}, 400)
        start, end, dimension = query
        if dimension != "all" and not dimension.startswith("queue:"):
            return json_reply({"error": "the agents table takes only 'queue' as a filter"}, 400)
        queue = None if dimension == "all" else dimension.partition(":")[2]
        if inside >= max_at_once * (1 + QUEUE_PER_SLOT):
            return json_reply(
                {"error": "too many agents requests at once; retry shortly"}, 429,
                headers={"Retry-After": "1"})
        inside += 1
        try:
            async with slots:
                return await answer(start, end, queue, limit, offset)
        finally:
            inside -= 1

    async def answer(start: int, end: int, queue: str | None, limit: int, offset: int
                     ) -> web.Response:
        store, rules = await served()
        n = partitions()
        prefixes = (["agent:", f"{QUEUE_AGENT}:", "queue:", "all|"] if queue is None
                    else [queue_agent_dimension(queue, ""), f"queue:{queue}|"])
        hours = list(range(start, end, HOUR))
        fields: dict[str, int] = {}
        for i in range(0, len(hours), HOURS_PER_READ):
            async with reads:
                part = await store.sum_prefixed(n, hours[i:i + HOURS_PER_READ], prefixes, NAMES)
            for field, value in part.items():
                fields[field] = fields.get(field, 0) + value
        async with reads:
            watermark = clock_summary(await store.read_clocks(n))
        agents, per_queue, centre_queues = table_inputs(fields, queue)
        rows = agent_rows(agents, per_queue, centre_queues, min_contacts)
        prefix = "all" if queue is None else f"queue:{queue}"
        centre = {name: fields.get(f"{prefix}|{name}", 0) for name in
                  ("handled", "fcr_total", "resolved", "unresolved")}
        fcr = closed_fcr(centre)
        return json_reply({
            "from": rfc3339(start), "to": rfc3339(end), "queue": queue,
            "min_contacts": min_contacts,
            "centre": {**centre, "fcr": None if fcr is None else round(fcr, 6)},
            "agents_total": len(rows),
            "flagged_total": sum(1 for r in rows if r.flagged),
            "limit": limit, "offset": offset,
            "agents": [r.to_json() for r in rows[offset:offset + limit]],
            "final": watermark is not None and watermark >= end + rules.max_window,
            "watermark": None if watermark is None else rfc3339(watermark),
            "policy_version": rules.version,
        })

    router = cast(Any, app.web).web_app.router
    router.add_get("/api/v1/agents", agents, allow_head=False)
