"""GET /api/v1/containment: failed self-service and abandon callbacks of a range
(domain/containment, docs/api.md#containment)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import faust
from aiohttp import web

from service.adapters.http_agents import PairsParser, QueryParser, Served
from service.adapters.http_ranges import json_reply, range_status, sum_over_range
from service.domain.containment import containment_figures
from service.domain.counters import HOUR
from service.domain.engine import rfc3339
from service.domain.storage_names import counter_field

NAMES = ("self_service", "self_service_identified", "failed_containment", "abandoned",
         "abandoned_identified", "abandon_callbacks")


def install_containment_routes(app: faust.App, served: Served, partitions: Callable[[], int],
                               reads: asyncio.Semaphore, parse_pairs: PairsParser,
                               parse_query: QueryParser) -> None:
    """Register GET /api/v1/containment?from&to[&queue|channel]."""

    async def containment(request: web.Request) -> web.Response:
        pairs = parse_pairs(request.rel_url.raw_query_string)
        query = parse_query(pairs) if isinstance(pairs, list) else pairs
        if isinstance(query, str):
            return json_reply({"error": query}, 400)
        start, end, dimension = query
        if dimension.split(":", 1)[0] not in ("all", "queue", "channel"):
            return json_reply(
                {"error": "containment takes only 'queue' or 'channel' as a filter"}, 400)
        store, rules = await served()
        n = partitions()
        hours = list(range(start, end, HOUR))
        fields = [counter_field(dimension, name) for name in NAMES]
        totals = await sum_over_range(store, n, hours, fields, reads)
        figures = containment_figures(dict(zip(NAMES, totals, strict=True)))
        return json_reply({
            "from": rfc3339(start), "to": rfc3339(end), "dimension": dimension,
            **{k: round(v, 6) if isinstance(v, float) else v for k, v in figures.items()},
            **await range_status(store, n, end, rules, reads),
        })

    router = cast(Any, app.web).web_app.router
    router.add_get("/api/v1/containment", containment, allow_head=False)
