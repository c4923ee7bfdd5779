"""GET /api/v1/queues/{queue}/contacts: a queue's contacts of the last hour of event time, newest
first, each with its verdict as it stands: what the queue page lists under its charts.

The worker keeps the latest contacts of each partition in a sorted set (storage_names.RECENT,
written by the commit script): this reads those of the last hour, keeps the queue's, and reads
their stored views in one round trip. A contact whose view is gone (erased) is left out, and
so is one whose view now names another queue (a corrected call-ended).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import faust
import orjson
from aiohttp import web

from service.adapters.http_ranges import checked_names, json_reply, whole_number
from service.adapters.redis_state import RedisState
from service.domain.engine import rfc3339
from service.domain.partition import clock_summary
from service.domain.policy import Policy
from service.domain.storage_names import RECENT_SECONDS

QUEUES = "/api/v1/queues/"
SUFFIX = "/contacts"
DEFAULT_LIMIT, MAX_LIMIT = 50, 200
# What each listed contact shows: its call-ended and its verdict (the whole view is on
# /api/v1/contacts/{contact_id}).
FIELDS = ("contact_id", "customer_id", "occurred_at", "channel", "queue", "agent_id", "reason",
          "outcome", "wait_seconds", "is_repeat", "repeat_of", "transfers", "resolution",
          "resolution_reasons", "csat", "survey_resolved", "version")


def limit_of(pairs: Sequence[tuple[str, str]]) -> int | str:
    """The `limit` of the query (the only parameter), or the message of a 400."""
    params = checked_names(pairs, ("limit",))
    if isinstance(params, str):
        return params
    limit = whole_number(params.get("limit", str(DEFAULT_LIMIT)), 1, MAX_LIMIT)
    return f"'limit' must be a whole number from 1 to {MAX_LIMIT}" if limit is None else limit


def install_queue_contacts_routes(
    app: faust.App, served: Callable[[], Awaitable[tuple[RedisState, Policy]]],
    partitions: Callable[[], int], reads: asyncio.Semaphore,
    query_pairs: Callable[[str], list[tuple[str, str]] | str],
    path_id: Callable[[str, str], tuple[str] | str],
) -> None:
    """Register GET /api/v1/queues/{queue}/contacts?[limit=]."""

    async def queue_contacts(request: web.Request) -> web.Response:
        # The queue is the segment before the last (its letters may be percent-encoded too).
        queue = path_id(request.rel_url.raw_path.rsplit("/", 1)[0], QUEUES)
        pairs = query_pairs(request.rel_url.raw_query_string)
        limit = limit_of(pairs) if isinstance(pairs, list) else pairs
        if isinstance(queue, str) or isinstance(limit, str):
            return json_reply({"error": queue if isinstance(queue, str) else limit}, 400)
        store, rules = await served()
        n = partitions()
        async with reads:
            watermark = clock_summary(await store.read_clocks(n))
        body: dict[str, Any] = {"queue": queue[0], "limit": limit, "policy_version": rules.version}
        if watermark is None:
            return json_reply({**body, "from": None, "watermark": None, "contacts": []})
        since = watermark - RECENT_SECONDS
        async with reads:
            latest = [cid for _, q, cid in await store.read_recent(n, since) if q == queue[0]]
        contacts: list[dict[str, Any]] = []
        for i in range(0, len(latest), limit):  # views gone or moved are skipped
            wanted = latest[i:i + limit]
            async with reads:
                views = await store.read_contacts(wanted)
            for raw in views:
                view = None if raw is None else orjson.loads(raw)
                if isinstance(view, dict) and view.get("queue") == queue[0]:
                    contacts.append({k: view.get(k) for k in FIELDS})
            if len(contacts) >= limit:
                break
        return json_reply({**body, "from": rfc3339(since), "watermark": rfc3339(watermark),
                           "contacts": contacts[:limit]})

    router = cast(Any, app.web).web_app.router
    router.add_get(QUEUES + "{queue:[^/]+}" + SUFFIX, queue_contacts, allow_head=False)
