"""HTTP endpoints of the worker, served by Faust's web server: metrics, health and the API."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast
from urllib.parse import parse_qsl, unquote_to_bytes

import faust
from aiohttp import web
from faust.web import Request, Response, View
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from service.adapters.http_pages import install_pages
from service.adapters.http_ranges import (
    checked_names,
    json_reply,
    range_status,
    sum_over_range,
)
from service.adapters.http_surveys import install_surveys_routes
from service.adapters.http_value import install_value_routes
from service.adapters.kafka_publish import partition_of
from service.adapters.redis_state import RedisState
from service.domain.costs import ContactCosts
from service.domain.counters import HOUR
from service.domain.engine import rfc3339
from service.domain.policy import Policy
from service.domain.storage_names import counter_field, customer_state
from service.domain.summary import customer_summary
from service.domain.validation import MAX_ID_LENGTH, parse_rfc3339

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]
# The state and rules readers serve, looked up per request (the active policy version).
Serving = Callable[[], Awaitable[tuple[RedisState, Policy]]]
MAX_RANGE_HOURS = 24 * 400
# FCR requests that may wait for a turn, per CX_API_MAX_FCR; more get 429.
FCR_QUEUE_PER_SLOT = 4
_DIMENSIONS = ("queue", "channel", "agent", "segment")
CUSTOMERS = "/api/v1/customers/"
CONTACTS = "/api/v1/contacts/"


def _json(body: Any, status: int = 200) -> Response:
    return cast(Response, json_reply(body, status))


# Counters are kept per hour of event time since the epoch; the range must also be printable
# as RFC 3339 (years up to 9999).
EARLIEST_HOUR = 0
LATEST_HOUR = 253402297200  # 9999-12-31T23:00:00Z
MAX_VALUE_LENGTH = MAX_ID_LENGTH  # queue, channel, agent and segment are 1-128 characters


def fcr_query(params: Mapping[str, str] | Sequence[tuple[str, str]]
              ) -> tuple[int, int, str] | str:
    """(from hour, to hour, dimension) from the query, or the message of a 400.

    `params` may be the query's (name, value) pairs: a parameter given twice is refused, not
    silently picked."""
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
    checked = checked_names(pairs, ("from", "to", *_DIMENSIONS))
    if isinstance(checked, str):
        return checked
    params = checked
    bounds = []
    for name in ("from", "to"):
        text = params.get(name)
        if not text:
            return f"'{name}' is required (RFC 3339, on the hour, e.g. 2026-11-24T09:00:00Z)"
        moment = parse_rfc3339(text) if len(text) <= 40 else None
        if moment is None:  # also a time outside years 1-9999 once in UTC
            return (f"'{name}' is not an RFC 3339 timestamp with offset from "
                    f"1970-01-01T00:00:00Z to 9999-12-31T23:00:00Z: {text[:40]!r}")
        try:
            epoch = moment.timestamp()
        except (OverflowError, ValueError):  # e.g. 0001-01-01T00:00:00+01:00 is year 0 in UTC
            epoch = -1.0
        if not EARLIEST_HOUR <= epoch <= LATEST_HOUR:
            return (f"'{name}' must be from 1970-01-01T00:00:00Z to 9999-12-31T23:00:00Z: "
                    f"{text!r}")
        if epoch % HOUR:
            return f"'{name}' must be on the hour: {text!r}"
        bounds.append(int(epoch))
    start, end = bounds
    if end <= start:
        return "'to' must be after 'from'"
    if (end - start) // HOUR > MAX_RANGE_HOURS:
        return (f"the range may cover at most {MAX_RANGE_HOURS} hours "
                f"({MAX_RANGE_HOURS // 24} days)")
    given = [(d, params[d]) for d in _DIMENSIONS if d in params]
    if len(given) > 1:
        return "give at most one of queue, channel, agent, segment"
    if given:
        kind, value = given[0]
        if not 1 <= len(value) <= MAX_VALUE_LENGTH:
            return f"'{kind}' must be 1 to {MAX_VALUE_LENGTH} characters, got {len(value)}"
        return start, end, f"{kind}:{value}"
    return start, end, "all"


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def path_id(raw_path: str, prefix: str) -> tuple[str] | str:
    """The id in the one path segment after `prefix` (percent-decoded, UTF-8), as a 1-tuple;
    or the message of a 400. Decoded here, from the raw path, so that every string of 1 to
    128 characters the event contract allows is reachable: `/`, `%`, `{`, `.`, control
    characters and any Unicode, percent-encoded."""
    # The segment after as many slashes as `prefix` has: the router matched the prefix on the
    # decoded path, and its letters may arrive percent-encoded (`%63ustomers`).
    segment = raw_path.split("/", prefix.count("/"))[-1]
    if _BAD_ESCAPE.search(segment):
        return "the id has a '%' not followed by two hex digits (send '%' as %25)"
    try:
        value = unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        return "the id is not valid UTF-8 once percent-decoded"
    if not 1 <= len(value) <= MAX_ID_LENGTH:
        return f"ids are 1 to {MAX_ID_LENGTH} characters, got {len(value)}"
    return (value,)


def query_pairs(query: str) -> list[tuple[str, str]] | str:
    """The raw query's (name, value) pairs, percent-decoded as UTF-8; or the message of a 400."""
    if _BAD_ESCAPE.search(query):
        return "the query has a '%' not followed by two hex digits (send '%' as %25)"
    try:
        return parse_qsl(query, keep_blank_values=True, strict_parsing=False,
                         errors="strict", max_num_fields=20)
    except UnicodeDecodeError:
        return "the query is not valid UTF-8 once percent-decoded"
    except ValueError:
        return "too many query parameters"


def _install_pages(app: faust.App, registry: CollectorRegistry, readiness: ReadinessCheck,
                   wallboard: Callable[[], dict[str, Any]]) -> None:
    """What reads no customer data: the pages (http_pages), the wallboard's figures, metrics,
    health."""
    install_pages(app)

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


def install_routes(app: faust.App, registry: CollectorRegistry, readiness: ReadinessCheck,
                   state: RedisState, policy: Policy, partitions: Callable[[], int],
                   wallboard: Callable[[], dict[str, Any]],
                   serving: Serving | None = None, max_reads: int = 32,
                   max_fcr: int = 2, costs: ContactCosts | None = None,
                   fcr_target: float = 0.7, agent_min_contacts: int = 30) -> None:
    """Register /metrics, /healthz, /readyz, /wallboard and /api/v1/* on the web server.

    With `serving`, each API request reads the state and rules of the policy version it
    names at that moment (so a switch of version applies to the next request, never half
    of one); without it, always `state` and `policy`.

    At most `max_reads` lookups read Redis at once; the others wait in line, first come first
    served. Redis' connection pool is then never exhausted by lookups: the batches' round
    trips always find a connection, and no lookup is overtaken again and again by later ones
    (the pool's own wait is not first come first served).

    At most `max_fcr` FCR requests read at once (a few more wait, then 429), each a week of
    hours per round trip, summed inside Redis, every round trip through the same gate: a
    400-day range is 58 short turns, never one long hold of Redis, a connection and the
    event loop."""
    reads = asyncio.Semaphore(max_reads)

    async def served() -> tuple[RedisState, Policy]:
        return (state, policy) if serving is None else await serving()

    _install_pages(app, registry, readiness, wallboard)

    # The two lookups are plain aiohttp handlers, not Faust pages: Faust's view dispatch and
    # its per-request sensor calls cost about a twentieth of a lookup (docs/benchmarks.md).
    # The middleware of HttpGuard applies to them as to every route.
    async def contact(request: web.Request) -> web.Response:
        contact_id = path_id(request.rel_url.raw_path, CONTACTS)
        if not isinstance(contact_id, tuple):
            return json_reply({"error": contact_id}, 400)
        async with reads:
            store, _ = await served()
            raw = await store.read_contact(contact_id[0])
        if raw is None:
            return json_reply({"error": f"no contact {contact_id[0]!r}"}, 404)
        return web.Response(body=raw, content_type="application/json")

    async def customer(request: web.Request) -> web.Response:
        customer_id = path_id(request.rel_url.raw_path, CUSTOMERS)
        if not isinstance(customer_id, tuple):
            return json_reply({"error": customer_id}, 400)
        partition = partition_of(customer_id[0], partitions())
        async with reads:
            store, rules = await served()
            found, clock = await store.read_state(partition,
                                                   customer_state(customer_id[0]))
        if found is None or clock.watermark is None:
            return json_reply({"error": f"no customer {customer_id[0]!r}"}, 404)
        return json_reply(customer_summary(found, clock.watermark, rules))

    # The line of FCR requests: at most `max_fcr` read at once, at most FCR_QUEUE_PER_SLOT
    # times that many wait; each reads a week at a time through the lookups' gate.
    fcr_slots = asyncio.Semaphore(max_fcr)
    fcr_inside = 0

    async def fcr(request: web.Request) -> web.Response:
        nonlocal fcr_inside
        pairs = query_pairs(request.rel_url.raw_query_string)
        query = fcr_query(pairs) if isinstance(pairs, list) else pairs
        if isinstance(query, str):
            return json_reply({"error": query}, 400)
        if fcr_inside >= max_fcr * (1 + FCR_QUEUE_PER_SLOT):
            return json_reply({"error": f"too many FCR requests at once (at most {max_fcr} "
                                       "computed at a time); retry shortly"}, 429,
                             headers={"Retry-After": "1"})
        fcr_inside += 1
        try:
            async with fcr_slots:
                return await _fcr_answer(*query)
        finally:
            fcr_inside -= 1

    async def _fcr_answer(start: int, end: int, dimension: str) -> web.Response:
        store, rules = await served()
        n = partitions()
        hours = list(range(start, end, HOUR))
        fields = [counter_field(dimension, name)
                  for name in ("fcr_total", "unresolved", "resolved")]
        total, unresolved, resolved = await sum_over_range(store, n, hours, fields, reads)
        return json_reply({
            "from": rfc3339(start), "to": rfc3339(end), "dimension": dimension,
            "total": total, "unresolved": unresolved, "resolved": resolved,
            "pending": total - unresolved - resolved,
            "fcr": None if total == 0 else round(1 - unresolved / total, 6),
            **await range_status(store, n, end, rules, reads),
        })

    install_value_routes(app, served, partitions, reads, query_pairs)  # before customers/{id}
    install_surveys_routes(app, served, partitions, reads, query_pairs, fcr_query)
    router = cast(Any, app.web).web_app.router
    # Any one path segment: the handlers decode the id from the raw path themselves.
    router.add_get(CONTACTS + "{contact_id:[^/]+}", contact, allow_head=False)
    router.add_get(CUSTOMERS + "{customer_id:[^/]+}", customer, allow_head=False)
    router.add_get("/api/v1/fcr", fcr, allow_head=False)
    _install_more(app, served, partitions, reads, max_fcr=max_fcr, costs=costs,
                  fcr_target=fcr_target, agent_min_contacts=agent_min_contacts)


def _install_more(app: faust.App, served: Serving, partitions: Callable[[], int],
                  reads: asyncio.Semaphore, *, max_fcr: int, costs: ContactCosts | None,
                  fcr_target: float, agent_min_contacts: int) -> None:
    """The endpoints of their own modules (imported here: they use this module's parsers)."""
    from service.adapters.http_agents import install_agents_routes
    from service.adapters.http_containment import install_containment_routes
    from service.adapters.http_drivers import install_drivers_routes
    from service.adapters.http_queue_contacts import install_queue_contacts_routes
    from service.adapters.http_trends import install_trends_routes

    install_drivers_routes(app, served, partitions, reads, costs=costs, fcr_target=fcr_target,
                           max_fcr=max_fcr)
    install_agents_routes(app, served, partitions, reads, query_pairs, fcr_query,
                          min_contacts=agent_min_contacts, max_at_once=max_fcr)
    install_containment_routes(app, served, partitions, reads, query_pairs, fcr_query)
    install_queue_contacts_routes(app, served, partitions, reads, query_pairs, path_id)
    install_trends_routes(app, served, partitions, reads, query_pairs, path_id,
                          fcr_target=fcr_target,
                          currency=None if costs is None else costs.currency)
