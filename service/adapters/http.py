"""HTTP endpoints of the worker, served by Faust's web server: metrics, health and the API."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, cast

import faust
import orjson
from aiohttp import web
from aiokafka.partitioner import murmur2
from faust.web import Request, Response, View
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from service.adapters.redis_state import RedisState
from service.domain.counters import HOUR
from service.domain.engine import rfc3339
from service.domain.policy import Policy
from service.domain.summary import customer_summary
from service.domain.validation import parse_rfc3339
from service.service_layer.ingest import clock_summary

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]
# The state and rules readers serve, looked up per request (the active policy version).
Serving = Callable[[], Awaitable[tuple[RedisState, Policy]]]
MAX_RANGE_HOURS = 24 * 400
_DIMENSIONS = ("queue", "channel", "agent", "segment")


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a key (murmur2, as the Java client)."""
    return int((murmur2(key.encode()) & 0x7FFFFFFF) % partitions)


def _web_json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _json(body: Any, status: int = 200) -> Response:
    return cast(Response, _web_json(body, status))


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def fcr_query(params: dict[str, str]) -> tuple[int, int, str] | str:
    """(from hour, to hour, dimension) from the query, or the message of a 400."""
    unknown = set(params) - {"from", "to", *_DIMENSIONS}
    if unknown:
        return f"unknown parameter(s): {', '.join(sorted(unknown))}"
    bounds = []
    for name in ("from", "to"):
        text = params.get(name)
        if not text:
            return f"'{name}' is required (RFC 3339, on the hour, e.g. 2026-11-24T09:00:00Z)"
        moment = parse_rfc3339(text)
        if moment is None:
            return f"'{name}' is not an RFC 3339 timestamp with offset: {text!r}"
        epoch = moment.timestamp()
        if epoch % HOUR:
            return f"'{name}' must be on the hour: {text!r}"
        bounds.append(int(epoch))
    start, end = bounds
    if end <= start:
        return "'to' must be after 'from'"
    if (end - start) // HOUR > MAX_RANGE_HOURS:
        return f"the range may cover at most {MAX_RANGE_HOURS} hours"
    given = [(d, params[d]) for d in _DIMENSIONS if params.get(d)]
    if len(given) > 1:
        return "give at most one of queue, channel, agent, segment"
    dimension = f"{given[0][0]}:{given[0][1]}" if given else "all"
    return start, end, dimension


_WALLBOARD_PAGE = resources.files("service.adapters").joinpath("wallboard.html").read_bytes()


def install_routes(app: faust.App, registry: CollectorRegistry, readiness: ReadinessCheck,
                   state: RedisState, policy: Policy, partitions: Callable[[], int],
                   wallboard: Callable[[], dict[str, Any]],
                   serving: Serving | None = None, max_reads: int = 32) -> None:
    """Register /metrics, /healthz, /readyz, /wallboard and /api/v1/* on the web server.

    With `serving`, each API request reads the state and rules of the policy version it
    names at that moment (so a switch of version applies to the next request, never half
    of one); without it, always `state` and `policy`.

    At most `max_reads` lookups read Redis at once; the others wait in line, first come first
    served. Redis' connection pool is then never exhausted by lookups: the batches' round
    trips always find a connection, and no lookup is overtaken again and again by later ones
    (the pool's own wait is not first come first served)."""
    reads = asyncio.Semaphore(max_reads)

    async def served() -> tuple[RedisState, Policy]:
        return (state, policy) if serving is None else await serving()

    @app.page("/wallboard")
    class Wallboard(View):
        async def get(self, request: Request) -> Response:
            return cast(Response, web.Response(body=_WALLBOARD_PAGE,
                                               content_type="text/html", charset="utf-8"))

    @app.page("/api/v1/wallboard")
    class WallboardData(View):
        async def get(self, request: Request) -> Response:
            return _json(wallboard())

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            # Negotiate the format: older Prometheus servers do not parse the newest one.
            encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
            response = web.Response(body=encoder(registry),
                                    headers={"Content-Type": content_type})
            return cast(Response, response)

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return _json({"status": "alive"})

    @app.page("/readyz")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            try:
                checks = await asyncio.wait_for(readiness(), timeout=3.0)
            except Exception:
                checks = {"checks_completed": False}
            ready = all(checks.values())
            return _json({"status": "ready" if ready else "not ready", **checks},
                         200 if ready else 503)

    # The two lookups are plain aiohttp handlers, not Faust pages: Faust's view dispatch and
    # its per-request sensor calls cost about a twentieth of a lookup (docs/benchmarks.md).
    # The middleware of HttpGuard applies to them as to every route.
    async def contact(request: web.Request) -> web.Response:
        contact_id = request.match_info["contact_id"]
        async with reads:
            store, _ = await served()
            raw = await store.read_contact(contact_id)
        if raw is None:
            return _web_json({"error": f"no contact {contact_id!r}"}, 404)
        return web.Response(body=raw, content_type="application/json")

    async def customer(request: web.Request) -> web.Response:
        customer_id = request.match_info["customer_id"]
        partition = partition_of(customer_id, partitions())
        async with reads:
            store, rules = await served()
            found, clock = await store.read_state(partition, f"c:{customer_id}")
        if found is None or clock.watermark is None:
            return _web_json({"error": f"no customer {customer_id!r}"}, 404)
        return _web_json(customer_summary(found, clock.watermark, rules))

    router = cast(Any, app.web).web_app.router
    router.add_get("/api/v1/contacts/{contact_id}", contact, allow_head=False)
    router.add_get("/api/v1/customers/{customer_id}", customer, allow_head=False)

    @app.page("/api/v1/fcr")
    class Fcr(View):
        async def get(self, request: Request) -> Response:
            query = fcr_query(dict(request.query))
            if isinstance(query, str):
                return _error(400, query)
            start, end, dimension = query
            store, rules = await served()
            n = partitions()
            hours = list(range(start, end, HOUR))
            names = ("fcr_total", "unresolved", "resolved")
            total, unresolved, resolved = await store.read_counters(
                n, hours, [f"{dimension}|{name}" for name in names])
            watermark = clock_summary(await store.read_clocks(n))
            final = watermark is not None and watermark >= end + rules.max_window
            return _json({
                "from": rfc3339(start), "to": rfc3339(end), "dimension": dimension,
                "total": total, "unresolved": unresolved, "resolved": resolved,
                "pending": total - unresolved - resolved,
                "fcr": None if total == 0 else round(1 - unresolved / total, 6),
                "final": final,
                "watermark": None if watermark is None else rfc3339(watermark),
                "policy_version": rules.version,
            })


