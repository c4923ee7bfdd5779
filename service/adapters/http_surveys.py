"""GET /api/v1/surveys: what surveys say against what customers do, over an hour range, and
what speech and text analytics heard (complaint rate, average sentiment), also for one topic;
GET /api/v1/topics: the complaint rate and sentiment of every topic, most complaints first.

The range and dimension are those of /api/v1/fcr; the counters are summed inside Redis a week
at a time, each week through the lookups' read gate, as /api/v1/fcr does. The topics' names are
not known in advance: their counters are scanned a day at a time (sum_prefixed.lua), so that
range is bounded by MAX_TOPIC_DAYS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import faust
from aiohttp import web

from service.adapters.http_ranges import json_reply, range_status, sum_over_range, whole_number
from service.adapters.redis_state import RedisState
from service.domain import survey_truth, voice
from service.domain.counters import HOUR, driver_name, driver_value
from service.domain.engine import rfc3339
from service.domain.policy import Policy
from service.domain.storage_names import counter_field, split_counter_field
from service.domain.validation import MAX_TOPIC_LENGTH

SURVEYS = "/api/v1/surveys"
TOPICS = "/api/v1/topics"
Query = tuple[int, int, str]
MAX_TOPIC_DAYS = 92
DEFAULT_TOPICS, MAX_TOPICS_LISTED = 20, 200
_TOPIC_NAMES = ("contacts", *voice.FIELDS)


def _take(pairs: list[tuple[str, str]], name: str) -> tuple[list[tuple[str, str]], str | None]:
    """`pairs` without the parameter `name`, and its value (the caller refuses a repeat)."""
    values = [v for n, v in pairs if n == name]
    return [(n, v) for n, v in pairs if n != name], (values[-1] if values else None)


def topic_dimension(dimension: str, topic: str) -> str | None:
    """The counters' dimension of `topic` over all queues or within one (None: topics are
    counted over all queues and per queue only)."""
    if dimension == "all":
        return f"topic:{topic}"
    if dimension.startswith("queue:"):
        return f"queue_topic:{driver_value(dimension[len('queue:'):])}>{driver_value(topic)}"
    return None


def _topic_query(pairs: list[tuple[str, str]] | str, range_query: Callable[
        [Sequence[tuple[str, str]]], Query | str], name: str = "topic"
                 ) -> tuple[Query, str | None] | str:
    """The range query and the value of `name` (checked by the caller), or a 400's message."""
    if isinstance(pairs, str):
        return pairs
    if sum(1 for n, _ in pairs if n == name) > 1:
        return f"parameter(s) given more than once: {name}"
    rest, value = _take(pairs, name)
    query = range_query(rest)
    return query if isinstance(query, str) else (query, value)


def install_surveys_routes(
    app: faust.App, served: Callable[[], Awaitable[tuple[RedisState, Policy]]],
    partitions: Callable[[], int], reads: asyncio.Semaphore,
    query_pairs: Callable[[str], list[tuple[str, str]] | str],
    range_query: Callable[[Sequence[tuple[str, str]]], Query | str],
) -> None:
    """Register GET /api/v1/surveys?from=&to=[&queue=|&channel=|&agent=|&segment=]."""

    async def surveys(request: web.Request) -> web.Response:
        parsed = _topic_query(query_pairs(request.rel_url.raw_query_string), range_query)
        if isinstance(parsed, str):
            return json_reply({"error": parsed}, 400)
        (start, end, dimension), topic = parsed
        counted: str | None = None
        if topic is not None:
            if not 1 <= len(topic) <= MAX_TOPIC_LENGTH:
                return json_reply({"error": f"'topic' must have 1 to {MAX_TOPIC_LENGTH} "
                                            "characters"}, 400)
            counted = topic_dimension(dimension, topic)
            if counted is None:
                return json_reply({"error": "'topic' combines with 'queue' only"}, 400)
        store, rules = await served()
        n = partitions()
        hours = list(range(start, end, HOUR))
        # per topic, only the speech analytics figures are counted
        names: tuple[str, ...] = (voice.FIELDS if counted is not None
                                  else survey_truth.FIELDS + voice.FIELDS)
        fields = [counter_field(counted or dimension, name) for name in names]
        totals = await sum_over_range(store, n, hours, fields, reads)
        counts = dict(zip(names, totals, strict=True))
        figures = {} if topic is not None else survey_truth.answer(counts)
        return json_reply({
            "from": rfc3339(start), "to": rfc3339(end), "dimension": dimension,
            **({} if topic is None else {"topic": topic}),
            **figures, "speech_analytics": voice.answer(counts),
            **await range_status(store, n, end, rules, reads),
        })

    async def topics(request: web.Request) -> web.Response:
        parsed = _topic_query(query_pairs(request.rel_url.raw_query_string), range_query,
                              "limit")
        if isinstance(parsed, str):
            return json_reply({"error": parsed}, 400)
        (start, end, dimension), limit_text = parsed
        limit = whole_number(str(DEFAULT_TOPICS) if limit_text is None else limit_text, 1,
                             MAX_TOPICS_LISTED)
        if limit is None:
            return json_reply({"error": "'limit' must be a whole number from 1 to "
                                        f"{MAX_TOPICS_LISTED}"}, 400)
        prefix = topic_dimension(dimension, "")
        if prefix is None:
            return json_reply({"error": "topics are counted over all queues and per 'queue' "
                                        "only"}, 400)
        if end - start > MAX_TOPIC_DAYS * 24 * HOUR:
            return json_reply({"error": f"the range may span at most {MAX_TOPIC_DAYS} days"},
                              400)
        store, rules = await served()
        n = partitions()
        sums = await _sum_topics(store, n, list(range(start, end, HOUR)), prefix, reads)
        rows = sorted(sums.items(), key=lambda kv: (-kv[1].get("voice_complaints", 0),
                                                    -kv[1].get("contacts", 0), kv[0]))
        return json_reply({
            "from": rfc3339(start), "to": rfc3339(end), "dimension": dimension,
            "limit": limit, "topics_counted": len(rows),
            "rows": [{"topic": topic, "contacts": counts.get("contacts", 0),
                      **voice.answer(counts)} for topic, counts in rows[:limit]],
            **await range_status(store, n, end, rules, reads),
        })

    router = cast(Any, app.web).web_app.router
    router.add_get(SURVEYS, surveys, allow_head=False)
    router.add_get(TOPICS, topics, allow_head=False)


async def _sum_topics(store: RedisState, partitions: int, hours: list[int], prefix: str,
                      reads: asyncio.Semaphore) -> dict[str, dict[str, int]]:
    """Per topic, its counters under `prefix` (`topic:` or `queue_topic:<q>>`) summed."""
    sums: dict[str, dict[str, int]] = {}
    for i in range(0, len(hours), 24):
        async with reads:
            found = await store.sum_prefixed(partitions, hours[i:i + 24], [prefix], _TOPIC_NAMES)
        for field, value in found.items():
            dimension, name = split_counter_field(field)
            topic = dimension[len(prefix):]
            if prefix != "topic:":
                topic = driver_name(topic)
            row = sums.setdefault(topic, {})
            row[name] = row.get(name, 0) + value
    return sums
