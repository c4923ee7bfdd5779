"""HTTP endpoints of the worker, served by Faust's web server: metrics and health."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust
from aiohttp import web
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]


def install_routes(app: faust.App, registry: CollectorRegistry, readiness: ReadinessCheck) -> None:
    """Register /metrics, /healthz and /readyz on the app's web server."""

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            response = web.Response(
                body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )
            return cast(Response, response)

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "alive"})

    @app.page("/readyz")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            try:
                checks = await asyncio.wait_for(readiness(), timeout=3.0)
            except (TimeoutError, Exception):
                checks = {"checks_completed": False}
            ready = all(checks.values())
            body: dict[str, Any] = {"status": "ready" if ready else "not ready", **checks}
            return self.json(body, status=200 if ready else 503)
