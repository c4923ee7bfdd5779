"""Who may call the worker's HTTP server, and how much (docs/security.md).

One aiohttp middleware in front of every route:
- `/api/v1/*` (customer and contact context: personal data) needs a bearer token from
  CX_API_TOKENS / CX_API_TOKENS_FILE, compared in constant time; `/api/v1/wallboard` (aggregate
  figures) is open while CX_WALLBOARD_PUBLIC is true;
- `/metrics` and `/healthz`, `/readyz` are open, or need their own token (CX_METRICS_TOKEN,
  CX_HEALTH_TOKEN);
- CORS for the origins in CX_CORS_ORIGINS, a request body limit, and a token bucket per
  client on `/api/*` (429 with Retry-After);
- any other path (Faust's built-in pages) is not served.
Rejections are counted in `cx_http_rejected_total{reason}`; nothing of the request (path,
token) is logged.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from service.config import ConfigError, Settings

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC_PAGES = ("/wallboard",)
WALLBOARD_DATA = "/api/v1/wallboard"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_auth_required(settings: Settings) -> bool:
    """Whether /api/* needs a token; ConfigError when the settings leave personal data open on
    a non-loopback address without saying so (CX_API_AUTH=none)."""
    configured = bool(settings.api_tokens or settings.api_tokens_file)
    if settings.api_auth == "none":
        return False
    if settings.api_auth == "token" or configured:
        return True
    if is_loopback(settings.http_host):
        return False
    raise ConfigError(
        f"CX_API_AUTH: no API token is configured and CX_HTTP_HOST={settings.http_host} is not a "
        "loopback address; set CX_API_TOKENS or CX_API_TOKENS_FILE, or CX_API_AUTH=none to "
        "serve customer data without authentication"
    )


@functools.lru_cache(maxsize=256)
def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenSet:
    """The accepted bearer tokens: the fixed ones plus those of a file, which is re-read when
    its modification time changes (looked at no more than once a second)."""

    def __init__(self, tokens: tuple[str, ...], path: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fixed = tokens
        self._path = path
        self._clock = clock
        self._from_file: tuple[str, ...] = ()
        self._stamp: float | None = None
        self._checked = -math.inf
        if path:
            self._reload(initial=True)

    def _reload(self, *, initial: bool = False) -> None:
        try:
            stamp = os.stat(self._path).st_mtime_ns
            if stamp == self._stamp:
                return
            with open(self._path, encoding="utf-8") as f:
                lines = [line.split("#", 1)[0].strip() for line in f]
        except OSError as exc:
            if initial:
                raise ConfigError(f"CX_API_TOKENS_FILE: cannot read {self._path!r} "
                                  f"({exc.strerror})") from None
            return  # keep the tokens last read: a file being replaced is briefly missing
        tokens = tuple(line for line in lines if line)
        short = [t for t in tokens if len(t) < 16]
        if short:
            if initial:
                raise ConfigError("CX_API_TOKENS_FILE: each token must have at least 16 "
                                  "characters")
            tokens = tuple(t for t in tokens if len(t) >= 16)
            log.warning("CX_API_TOKENS_FILE: %d token(s) under 16 characters ignored",
                        len(short))
        self._from_file, self._stamp = tokens, stamp

    def tokens(self) -> tuple[str, ...]:
        if self._path:
            now = self._clock()
            if now - self._checked >= 1.0:
                self._checked = now
                self._reload()
        return self._fixed + self._from_file

    def match(self, presented: str) -> str | None:
        """An identity of the token (not the token) when `presented` is one of them."""
        found = None
        # Digests have one length, so not even the tokens' lengths leak through timing; every
        # token is compared, in constant time, whichever matches.
        given = hashlib.sha256(presented.encode()).digest()
        for token in self.tokens():
            if hmac.compare_digest(given, _digest(token)):
                found = token
        if found is None:
            return None
        return _digest(found).hex()[:16]


class RateLimiter:
    """A token bucket per client: `rate` requests a second on average, `burst` at once."""

    def __init__(self, rate: float, burst: int, *, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def wait(self, client: str) -> float:
        """0 when the request may go ahead (and is counted); else seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        level, last = self._buckets.pop(client, (self.burst, now))
        level = min(self.burst, level + (now - last) * self.rate)
        if level >= 1.0:
            level -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - level) / self.rate
        self._buckets[client] = (level, now)
        while len(self._buckets) > self._max_clients:  # forget the longest-idle client
            self._buckets.popitem(last=False)
        return wait


def _json(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps({"error": message}), status=status,
                        content_type="application/json", headers=headers)


class HttpGuard:
    """Authentication, CORS, size and rate limits for the worker's web server."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.api_auth = api_auth_required(settings)
        self.api_tokens = TokenSet(settings.api_tokens, settings.api_tokens_file, clock)
        self.wallboard_public = settings.wallboard_public
        self.metrics_tokens = TokenSet((settings.metrics_token,) if settings.metrics_token
                                       else ())
        self.health_tokens = TokenSet((settings.health_token,) if settings.health_token else ())
        self.origins = frozenset(settings.cors_origins)
        self.max_body = settings.http_max_request_bytes
        self.limiter = RateLimiter(settings.api_rate_limit, settings.api_rate_burst, clock=clock)
        self.rejected: Counter | None = None

    def register(self, registry: CollectorRegistry) -> None:
        self.rejected = Counter("cx_http_rejected", "HTTP requests refused, by reason",
                                ["reason"], registry=registry)
        for reason in ("unauthorized", "rate_limited", "too_large", "origin", "not_found"):
            self.rejected.labels(reason)

    def application_options(self) -> dict[str, Any]:
        """For Faust's `web_application_options`: the aiohttp Application's arguments."""
        return {"middlewares": [self.middleware], "client_max_size": max(self.max_body, 1)}

    def _reject(self, reason: str, response: web.Response) -> web.Response:
        if self.rejected is not None:
            self.rejected.labels(reason).inc()
        return response

    def _cors_origin(self, request: web.Request) -> str | None:
        origin = request.headers.get("Origin")
        if origin is None:
            return None
        if "*" in self.origins:
            return "*"
        return origin if origin.rstrip("/") in self.origins else None

    @staticmethod
    def _bearer(request: web.Request) -> str | None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None

    def _tokens_for(self, path: str) -> TokenSet | bool | None:
        """The tokens a path needs; None when open; False when the path is not served."""
        if path in PUBLIC_PAGES:
            return None
        if path == WALLBOARD_DATA and self.wallboard_public:
            return None
        if path.startswith("/api/"):
            return self.api_tokens if self.api_auth or path == WALLBOARD_DATA else None
        if path == "/metrics":
            return self.metrics_tokens if self.metrics_tokens.tokens() else None
        if path in ("/healthz", "/readyz"):
            return self.health_tokens if self.health_tokens.tokens() else None
        return False

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        needs = self._tokens_for(path)
        if needs is False:
            return self._reject("not_found", _json(404, "not found"))
        cors = self._cors_origin(request) if path.startswith("/api/") else None
        headers = {"Vary": "Origin"}
        if cors is not None:
            headers["Access-Control-Allow-Origin"] = cors
        if request.method == "OPTIONS" and request.headers.get("Origin"):
            if cors is None:
                return self._reject("origin", _json(403, "origin not allowed"))
            headers.update({"Access-Control-Allow-Methods": "GET, OPTIONS",
                            "Access-Control-Allow-Headers": "Authorization, Content-Type",
                            "Access-Control-Max-Age": "600"})
            return web.Response(status=204, headers=headers)
        if request.content_length is not None and request.content_length > self.max_body:
            return self._reject("too_large", _json(
                413, f"request body over {self.max_body} bytes", headers))
        if request.content_length is None and request.body_exists:
            body = await request.content.read(self.max_body + 1)
            if len(body) > self.max_body:
                return self._reject("too_large", _json(
                    413, f"request body over {self.max_body} bytes", headers))
        presented = self._bearer(request)
        identity = None
        if presented is not None and isinstance(needs, TokenSet):
            identity = needs.match(presented)
        if path.startswith("/api/"):
            client = f"token:{identity}" if identity else f"addr:{request.remote}"
            wait = self.limiter.wait(client)
            if wait > 0:
                headers["Retry-After"] = str(max(1, math.ceil(wait)))
                return self._reject("rate_limited", _json(429, "too many requests", headers))
        if isinstance(needs, TokenSet) and identity is None:
            challenge = 'Bearer realm="cx-stream"'
            if presented is not None:
                challenge += ', error="invalid_token"'
            headers["WWW-Authenticate"] = challenge
            return self._reject("unauthorized", _json(
                401, "a valid bearer token is required" if presented is None
                else "the bearer token is not valid", headers))
        response = await handler(request)
        response.headers.update(headers)
        if path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response
