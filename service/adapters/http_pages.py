"""The pages the worker serves (service/web/): the wallboard, a queue, a customer's journey and
the at-risk work list. Each page is static HTML, CSS and JavaScript of the package that reads
the JSON API from the browser (with the bearer token given as `#token=...`); the pages hold no
data themselves, so they are served without a token.

Only the files listed here are served, from memory, each with its content type; every page
carries a Content-Security-Policy that allows scripts, styles and requests to this server only
(no inline script), and no framing.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, cast

import faust
from aiohttp import web

PAGES = {
    "/wallboard": "wallboard.html",
    "/ui/queues/{queue:[^/]+}": "queue.html",
    "/ui/customers/{customer_id:[^/]+}": "customer.html",
    "/ui/at-risk": "at-risk.html",
}
# As the router names them (http_security judges a request by the route it reaches).
PAGE_ROUTES = ("/wallboard", "/ui/queues/{queue}", "/ui/customers/{customer_id}",
               "/ui/at-risk", "/ui/static/{name}")
STATIC = {
    "pages.css": "pages.css",
    "common.js": "common.js",
    "charts.js": "charts.js",
    "wallboard.js": "wallboard.js",
    "queue.js": "queue.js",
    "customer.js": "customer.js",
    "at-risk.js": "at-risk.js",
    "uPlot.iife.min.js": "vendor/uplot-1.6.32/uPlot.iife.min.js",
    "uPlot.min.css": "vendor/uplot-1.6.32/uPlot.min.css",
}
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}


def _read(path: str) -> bytes:
    return resources.files("service").joinpath("web", *path.split("/")).read_bytes()


def _reply(body: bytes, name: str) -> web.Response:
    kind = TYPES[name[name.rfind("."):]]
    return web.Response(body=body, content_type=kind, charset="utf-8", headers=HEADERS)


def install_pages(app: faust.App) -> None:
    """Register the pages and their static files (read once, at start)."""
    router = cast(Any, app.web).web_app.router
    for route, file in PAGES.items():
        body = _read(file)

        async def page(request: web.Request, body: bytes = body, file: str = file
                       ) -> web.Response:
            return _reply(body, file)

        router.add_get(route, page, allow_head=False)
    files = {name: _read(path) for name, path in STATIC.items()}

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files:
            raise web.HTTPNotFound()
        return _reply(files[name], name)

    router.add_get("/ui/static/{name}", static, allow_head=False)
