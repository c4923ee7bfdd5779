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
from aiohttp import web

from service.adapters.http_ranges import json_reply, range_status, sum_over_range
from service.adapters.redis_state import RedisState
from service.domain import survey_truth, voice
from service.domain.counters import HOUR
from service.domain.engine import rfc3339
from service.domain.policy import Policy
from service.domain.storage_names import counter_field

SURVEYS = "/api/v1/surveys"
Query = tuple[int, int, str]


def install_surveys_routes(
    app: faust.App, served: Callable[[], Awaitable[tuple[RedisState, Policy]]],
    partitions: Callable[[], int], reads: asyncio.Semaphore,
    query_pairs: Callable[[str], list[tuple[str, str]] | str],
    range_query: Callable[[Sequence[tuple[str, str]]], Query | str],
) -> None:
    """Register GET /api/v1/surveys?from=&to=[&queue=|&channel=|&agent=|&segment=]."""

    async def surveys(request: web.Request) -> web.Response:
        pairs = query_pairs(request.rel_url.raw_query_string)
        query = range_query(pairs) if isinstance(pairs, list) else pairs
        if isinstance(query, str):
            return json_reply({"error": query}, 400)
        start, end, dimension = query
        store, rules = await served()
        n = partitions()
        hours = list(range(start, end, HOUR))
        names = survey_truth.FIELDS + voice.FIELDS
        fields = [counter_field(dimension, name) for name in names]
        totals = await sum_over_range(store, n, hours, fields, reads)
        counts = dict(zip(names, totals, strict=True))
        return json_reply({
            "from": rfc3339(start), "to": rfc3339(end), "dimension": dimension,
            **survey_truth.answer(counts), "speech_analytics": voice.answer(counts),
            **await range_status(store, n, end, rules, reads),
        })

    router = cast(Any, app.web).web_app.router
    router.add_get(SURVEYS, surveys, allow_head=False)
