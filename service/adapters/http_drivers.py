"""HTTP endpoints of repeat drivers and costs: /api/v1/repeat-drivers and /api/v1/cost
(docs/api.md). Both sum hour counters over an hour-aligned range, like /api/v1/fcr."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust
from aiohttp import web

from service.adapters.http import (
    FCR_QUEUE_PER_SLOT,
    Serving,
    fcr_query,
    query_pairs,
)
from service.adapters.http_ranges import checked_names, json_reply, range_status, sum_over_range
from service.domain.costs import ContactCosts, avoidable, money, per_resolution
from service.domain.counters import HOUR, driver_name, driver_value
from service.domain.drivers import (
    BY,
    DEFAULT_LIMIT,
    MAX_LIMIT,
    DriverCounts,
    driver_kind,
    pareto,
)
from service.domain.engine import rfc3339
from service.domain.storage_names import counter_field, split_counter_field

# Repeat drivers are summed inside Redis a day of hours per script call and partition
# (sum_prefixed.lua scans each hour's fields), each call through the lookups' read gate.
HOURS_PER_SCAN = 24
_DRIVER_NAMES = ("unresolved", "fcr_total", "resolved", "led_cost")
_COST_NAMES = ("handled", "cost", "repeats", "repeat_cost", "settled_cost", "resolved",
               "unresolved", "fcr_total")


def drivers_query(pairs: list[tuple[str, str]]
                  ) -> tuple[int, int, str, str | None, int] | str:
    """(from hour, to hour, by, queue or None, limit) from the query, or the message of a 400."""
    params = checked_names(pairs, ("from", "to", "by", "queue", "limit"))
    if isinstance(params, str):
        return params
    by = params.get("by", "")
    if by not in BY:
        return f"'by' must be one of {', '.join(BY)}"
    limit = DEFAULT_LIMIT
    if "limit" in params:
        text = params["limit"]
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_LIMIT):
            return f"'limit' must be a whole number from 1 to {MAX_LIMIT}"
        limit = int(text)
    ranged = fcr_query([(n, v) for n, v in pairs if n in ("from", "to", "queue")])
    if isinstance(ranged, str):
        return ranged
    start, end, dimension = ranged
    queue = dimension.partition(":")[2] if dimension != "all" else None
    return start, end, by, queue, limit


def _pareto_rows(sums: dict[str, dict[str, int]], kind: str, by: str, prefix: str, limit: int,
                 costs: ContactCosts | None) -> tuple[list[Any], list[dict[str, Any]]]:
    """The Pareto of the driver dimensions summed under `prefix` (and, for flows, the origin
    queues' FCR from the `queue:` sums): its table and the rows as the API shows them."""
    rows: dict[str, DriverCounts] = {}
    flows: dict[str, tuple[str, str]] = {}  # flow row -> (origin queue, what it led to)
    for dimension, row in sums.items():
        if not dimension.startswith(prefix):
            continue
        label = dimension[len(f"{kind}:"):]
        if kind == "flow":
            origin, _, led = label.partition(">")
            name = f"{driver_name(origin)}>{driver_name(led)}"
            flows[name] = (driver_name(origin), driver_name(led))
        elif kind != by:
            name = driver_name(label.partition(">")[2])
        else:
            name = label
        rows[name] = DriverCounts(row.get("unresolved", 0), row.get("fcr_total", 0),
                                  row.get("resolved", 0), row.get("led_cost", 0))
    table = pareto(rows, limit)
    out_rows = []
    for r in table:
        fcr = r.counts.fcr
        item: dict[str, Any] = {"driver": r.driver, "unresolved": r.counts.unresolved}
        if kind == "flow":
            origin, led = flows.get(r.driver, ("", "")) if r.drivers == 1 else ("", "")
            queue_counts = sums.get(f"queue:{origin}", {}) if origin else {}
            total = queue_counts.get("fcr_total", 0)
            fcr = None if total <= 0 else 1 - queue_counts.get("unresolved", 0) / total
            item.update(origin_queue=origin or None, repeat_queue=led or None)
        item.update({
            "share": round(r.share, 6), "cumulative_share": round(r.cumulative_share, 6),
            "fcr": None if fcr is None else round(fcr, 6),
            "repeat_cost": None if costs is None else money(r.counts.led_cost),
            "drivers": r.drivers,
        })
        out_rows.append(item)
    return table, out_rows


def install_drivers_routes(app: faust.App, served: Callable[[], Awaitable[Any]],
                           partitions: Callable[[], int], reads: asyncio.Semaphore, *,
                           costs: ContactCosts | None, fcr_target: float,
                           max_fcr: int = 2) -> None:
    """Register /api/v1/repeat-drivers and /api/v1/cost (each a line of at most `max_fcr`
    requests computing at once, as /api/v1/fcr)."""
    slots = asyncio.Semaphore(max_fcr)
    inside = 0
    serve = cast(Serving, served)

    async def in_line(answer: Awaitable[web.Response]) -> web.Response:
        nonlocal inside
        if inside >= max_fcr * (1 + FCR_QUEUE_PER_SLOT):
            cast(Any, answer).close()
            return json_reply({"error": f"too many range requests at once (at most {max_fcr} "
                                   "computed at a time); retry shortly"}, 429,
                         headers={"Retry-After": "1"})
        inside += 1
        try:
            async with slots:
                return await answer
        finally:
            inside -= 1

    async def repeat_drivers(request: web.Request) -> web.Response:
        pairs = query_pairs(request.rel_url.raw_query_string)
        query = drivers_query(pairs) if isinstance(pairs, list) else pairs
        if isinstance(query, str):
            return json_reply({"error": query}, 400)
        return await in_line(_drivers_answer(*query))

    async def _drivers_answer(start: int, end: int, by: str, queue: str | None,
                              limit: int) -> web.Response:
        store, rules = await serve()
        kind = driver_kind(by, queue)
        prefix = f"{kind}:"
        if kind != by or kind == "flow":
            if queue is not None:
                prefix += driver_value(queue) + ">"
        elif queue is not None:  # by=queue with a queue: that queue's row only
            prefix += queue
        sums: dict[str, dict[str, int]] = {}
        hours = list(range(start, end, HOUR))
        n = partitions()
        scans: list[tuple[str, tuple[str, ...]]] = [(prefix, _DRIVER_NAMES)]
        if kind == "flow":  # and the origin queues' FCR
            scans.append(("queue:", ("unresolved", "fcr_total")))
        for i in range(0, len(hours), HOURS_PER_SCAN):
            for scan_prefix, names in scans:
                async with reads:
                    found = await store.sum_prefixed(n, hours[i:i + HOURS_PER_SCAN],
                                                     [scan_prefix], names)
                for field, value in found.items():
                    dimension, name = split_counter_field(field)
                    if kind == "queue" and queue is not None and dimension != prefix:
                        continue  # another queue whose name starts with this one
                    row = sums.setdefault(dimension, {})
                    row[name] = row.get(name, 0) + value
        table, out_rows = _pareto_rows(sums, kind, by, prefix, limit, costs)
        return json_reply({
            "from": rfc3339(start), "to": rfc3339(end), "by": by, "queue": queue,
            "limit": limit, "unresolved": sum(r.counts.unresolved for r in table),
            "currency": None if costs is None else costs.currency,
            "rows": out_rows, **await range_status(store, n, end, rules, reads),
        })

    async def cost(request: web.Request) -> web.Response:
        pairs = query_pairs(request.rel_url.raw_query_string)
        query = fcr_query(pairs) if isinstance(pairs, list) else pairs
        if isinstance(query, str):
            return json_reply({"error": query}, 400)
        if costs is None:
            return json_reply({"error": "no contact costs are configured (CX_CONTACT_COSTS)"}, 404)
        return await in_line(_cost_answer(*query))

    async def _cost_answer(start: int, end: int, dimension: str) -> web.Response:
        assert costs is not None
        store, rules = await serve()
        n = partitions()
        hours = list(range(start, end, HOUR))
        fields = [counter_field(dimension, name) for name in _COST_NAMES]
        totals = await sum_over_range(store, n, hours, fields, reads)
        c = dict(zip(_COST_NAMES, totals, strict=True))
        each = per_resolution(c["settled_cost"], c["resolved"])
        return json_reply({
            "from": rfc3339(start), "to": rfc3339(end), "dimension": dimension,
            "currency": costs.currency,
            "handled": c["handled"], "contact_cost": money(c["cost"]),
            "repeats": c["repeats"], "repeat_cost": money(c["repeat_cost"]),
            "resolved": c["resolved"], "unresolved": c["unresolved"],
            "settled_cost": money(c["settled_cost"]),
            "cost_per_resolution": None if each is None else money(each),
            "fcr_target": fcr_target,
            "avoidable_cost": money(avoidable(c["settled_cost"], c["resolved"],
                                              c["unresolved"], fcr_target)),
            **await range_status(store, n, end, rules, reads),
        })

    router = cast(Any, app.web).web_app.router
    router.add_get("/api/v1/repeat-drivers", repeat_drivers, allow_head=False)
    router.add_get("/api/v1/cost", cost, allow_head=False)
