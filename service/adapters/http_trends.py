"""What the pages draw that no other endpoint gives (docs/api.md):

- GET /api/v1/fcr/hourly: FCR hour by hour over the last hours of event time, against the same
  hours a week earlier: the trend lines of the wallboard and the queue page;
- GET /api/v1/customers/{customer_id}/journey: every contact held of a customer with its
  verdict, transfers and survey answers, and the whole perception curve (domain/journey.py).

Both are bounded: at most a week of hours (two weeks of hour keys, read a day of hours per
round trip through the lookups' gate), and the contacts held of one customer (at most
MAX_JOURNEY_CONTACTS shown).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import faust
from aiohttp import web

from service.adapters.http_ranges import checked_names, json_reply
from service.adapters.kafka_publish import partition_of
from service.adapters.redis_state import RedisState
from service.domain.counters import HOUR
from service.domain.engine import rfc3339
from service.domain.journey import customer_journey
from service.domain.partition import clock_summary
from service.domain.policy import Policy
from service.domain.storage_names import counter_field, customer_state

Served = Callable[[], Awaitable[tuple[RedisState, Policy]]]
PairsParser = Callable[[str], list[tuple[str, str]] | str]
PathParser = Callable[[str, str], tuple[str] | str]
HOURLY = "/api/v1/fcr/hourly"
JOURNEY_SUFFIX = "/journey"
MAX_HOURS = 168
WEEK = 7 * 24 * HOUR
HOURS_PER_TRIP = 24
_DIMENSIONS = ("queue", "channel", "agent", "segment")
_FIELDS = ("fcr_total", "unresolved", "resolved")


def hourly_query(pairs: Sequence[tuple[str, str]]) -> tuple[int, str] | str:
    """(hours, dimension) from the query's pairs, or the message of a 400."""
    params = checked_names(pairs, ("hours", *_DIMENSIONS))
    if isinstance(params, str):
        return params
    text = params.get("hours", "24")
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_HOURS:
        return f"'hours' must be a whole number from 1 to {MAX_HOURS}, got {text[:20]!r}"
    given = [(d, params[d]) for d in _DIMENSIONS if d in params]
    if len(given) > 1:
        return "give at most one of queue, channel, agent, segment"
    if given:
        kind, value = given[0]
        if not 1 <= len(value) <= 128:
            return f"'{kind}' must be 1 to 128 characters, got {len(value)}"
        return int(text), f"{kind}:{value}"
    return int(text), "all"


def series(hours: Sequence[int], counts: dict[int, list[int]]) -> list[dict[str, Any]]:
    """One entry per hour: its FCR population, unresolved and resolved contacts, and FCR."""
    out = []
    for hour in hours:
        total, unresolved, resolved = counts.get(hour, [0, 0, 0])
        out.append({"at": rfc3339(hour), "total": total, "unresolved": unresolved,
                    "resolved": resolved,
                    "fcr": None if total <= 0 else round(1 - unresolved / total, 6)})
    return out


async def read_hourly(store: RedisState, partitions: int, hours: Sequence[int],
                      fields: Sequence[str], gate: asyncio.Semaphore) -> dict[int, list[int]]:
    """Each hour's fields summed over the partitions: a day of hours per round trip."""
    out: dict[int, list[int]] = {}
    for i in range(0, len(hours), HOURS_PER_TRIP):
        chunk = hours[i:i + HOURS_PER_TRIP]
        async with gate:
            pipe = store.client.pipeline(transaction=False)
            order = [(p, h) for p in range(partitions) for h in chunk]
            for partition, hour in order:
                pipe.hmget(store.hour_key(partition, hour), list(fields))
            replies = await pipe.execute()
        for (_, hour), reply in zip(order, replies, strict=True):
            row = out.setdefault(hour, [0] * len(fields))
            for j, value in enumerate(reply):
                if value is not None:
                    row[j] += int(value)
    return out


def install_trends_routes(app: faust.App, served: Served, partitions: Callable[[], int],
                          reads: asyncio.Semaphore, parse_pairs: PairsParser,
                          parse_path: PathParser, *, fcr_target: float,
                          currency: str | None) -> None:
    """Register GET /api/v1/fcr/hourly and /api/v1/customers/{customer_id}/journey."""

    async def hourly(request: web.Request) -> web.Response:
        pairs = parse_pairs(request.rel_url.raw_query_string)
        query = hourly_query(pairs) if isinstance(pairs, list) else pairs
        if isinstance(query, str):
            return json_reply({"error": query}, 400)
        count, dimension = query
        store, rules = await served()
        n = partitions()
        async with reads:
            watermark = clock_summary(await store.read_clocks(n))
        body: dict[str, Any] = {
            "dimension": dimension, "hours": count, "fcr_target": fcr_target,
            "currency": currency,
            "values_configured": bool(rules.perception.segment_values),
            "watermark": None if watermark is None else rfc3339(watermark),
            "policy_version": rules.version}
        if watermark is None:
            return json_reply({**body, "from": None, "to": None, "series": [],
                               "week_before": []})
        end = (int(watermark // HOUR) + 1) * HOUR  # the hour of the watermark included
        hours = [end - (count - i) * HOUR for i in range(count)]
        earlier = [h - WEEK for h in hours]
        fields = [counter_field(dimension, name) for name in _FIELDS]
        counts = await read_hourly(store, n, earlier + hours, fields, reads)
        return json_reply({**body, "from": rfc3339(hours[0]), "to": rfc3339(end),
                           "series": series(hours, counts),
                           "week_before": series(earlier, counts)})

    async def journey(request: web.Request) -> web.Response:
        # The id is the segment before the last (whose letters may be percent-encoded too).
        raw = request.rel_url.raw_path.rsplit("/", 1)[0]
        customer_id = parse_path(raw, "/api/v1/customers/")
        if not isinstance(customer_id, tuple):
            return json_reply({"error": customer_id}, 400)
        partition = partition_of(customer_id[0], partitions())
        async with reads:
            store, rules = await served()
            found, clock = await store.read_state(partition, customer_state(customer_id[0]))
        if found is None or clock.watermark is None:
            return json_reply({"error": f"no customer {customer_id[0]!r}"}, 404)
        return json_reply(customer_journey(found, clock.watermark, rules))

    router = cast(Any, app.web).web_app.router
    router.add_get(HOURLY, hourly, allow_head=False)
    router.add_get("/api/v1/customers/{customer_id:[^/]+}" + JOURNEY_SUFFIX, journey,
                   allow_head=False)
