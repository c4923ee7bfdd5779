"""GET /api/v1/surveys: what surveys say against what customers do, over an hour range, and
what speech and text analytics heard (complaint rate, average sentiment).

The range and dimension are those of /api/v1/fcr; the counters are summed inside Redis a week
at a time, each week through the lookups' read gate, as /api/v1/fcr does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import faust
import orjson
from aiohttp import web

from service.adapters.redis_state import RedisState
from service.domain import survey_truth, voice
from service.domain.counters import HOUR
from service.domain.engine import rfc3339
from service.domain.partition import clock_summary
from service.domain.policy import Policy
from service.domain.storage_names import counter_field

SURVEYS = "/api/v1/surveys"
HOURS_PER_READ = 24 * 7
Query = tuple[int, int, str]


def install_surveys_routes(
    app: faust.App, served: Callable[[], Awaitable[tuple[RedisState, Policy]]],
    partitions: Callable[[], int], reads: asyncio.Semaphore,
    query_pairs: Callable[[str], list[tuple[str, str]] | str],
    range_query: Callable[[Sequence[tuple[str, str]]], Query | str],
) -> None:
    """Register GET /api/v1/surveys?from=&to=[&queue=|&channel=|&agent=|&segment=]."""

    def reply(body: Any, status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(body), status=status,
                            content_type="application/json")

    async def surveys(request: web.Request) -> web.Response:
        pairs = query_pairs(request.rel_url.raw_query_string)
        query = range_query(pairs) if isinstance(pairs, list) else pairs
        if isinstance(query, str):
            return reply({"error": query}, 400)
        start, end, dimension = query
        store, rules = await served()
        n = partitions()
        hours = list(range(start, end, HOUR))
        names = survey_truth.FIELDS + voice.FIELDS
        fields = [counter_field(dimension, name) for name in names]
        totals = [0] * len(fields)
        for i in range(0, len(hours), HOURS_PER_READ):
            async with reads:
                part = await store.sum_counters(n, hours[i:i + HOURS_PER_READ], fields)
            totals = [a + b for a, b in zip(totals, part, strict=True)]
        async with reads:
            watermark = clock_summary(await store.read_clocks(n))
        counts = dict(zip(names, totals, strict=True))
        return reply({
            "from": rfc3339(start), "to": rfc3339(end), "dimension": dimension,
            **survey_truth.answer(counts), "speech_analytics": voice.answer(counts),
            "final": watermark is not None and watermark >= end + rules.max_window,
            "watermark": None if watermark is None else rfc3339(watermark),
            "policy_version": rules.version,
        })

    router = cast(Any, app.web).web_app.router
    router.add_get(SURVEYS, surveys, allow_head=False)
