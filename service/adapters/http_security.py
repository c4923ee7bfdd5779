"""Who may call the worker's HTTP server, and how much (docs/security.md).

One aiohttp middleware in front of every route:
- `/api/v1/*` (customer and contact context: personal data) needs a bearer token from
  CX_API_TOKENS / CX_API_TOKENS_FILE, compared in constant time; `/api/v1/wallboard` (aggregate
  figures) is open while CX_WALLBOARD_PUBLIC is true;
- `/metrics` and `/healthz`, `/readyz` are open, or need their own token (CX_METRICS_TOKEN,
  CX_HEALTH_TOKEN);
- while `/api/*` is served without a token, only to the host names of CX_API_ALLOWED_HOSTS in
  the `Host` header (a page of another site that re-points its own name at this address, DNS
  rebinding, sends its own name and is refused);
- CORS for the origins in CX_CORS_ORIGINS, a request body limit, and a token bucket per
  client on `/api/*` (429 with Retry-After);
- any other path (Faust's built-in pages) is not served;
- every refusal and error is `{"error": reason}` in JSON, including the router's 404 and 405
  and a failure of a handler (500, or 503 while Redis cannot be reached).
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
import traceback
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.config import PLACEHOLDER_TOKENS, ConfigError, Settings, host_name

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The pages (http_pages.PAGE_ROUTES): static files that read the API from the browser.
PUBLIC_PAGES = ("/wallboard", "/ui/queues/{queue}", "/ui/customers/{customer_id}",
                "/ui/at-risk", "/ui/static/{name}")
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
    its modification time changes (looked at no more than once a second).

    Fail closed: while the file is missing or unreadable, none of its tokens is accepted
    (`readable` is False, which /readyz reports); they are accepted again once it is back."""

    def __init__(self, tokens: tuple[str, ...], path: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fixed = tokens
        self._path = path
        self._clock = clock
        self._from_file: tuple[str, ...] = ()
        self._stamp: int | None = None
        self._checked = -math.inf
        self.readable = True
        if path:
            self._reload(initial=True)

    def _reload(self, *, initial: bool = False) -> None:
        try:
            stamp = os.stat(self._path).st_mtime_ns
            if stamp == self._stamp and self.readable:
                return
            with open(self._path, encoding="utf-8") as f:
                lines = [line.split("#", 1)[0].strip() for line in f]
        except (OSError, UnicodeDecodeError) as exc:
            what = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            if initial:
                raise ConfigError(f"CX_API_TOKENS_FILE: cannot read {self._path!r} "
                                  f"({what})") from None
            if self.readable:
                log.warning("CX_API_TOKENS_FILE: cannot read %r (%s): none of its tokens is "
                            "accepted until it can be read again", self._path, what)
            self._from_file, self._stamp, self.readable = (), None, False
            return
        tokens = tuple(line for line in lines if line)
        weak = [t for t in tokens if len(t) < 16 or t in PLACEHOLDER_TOKENS]
        if weak:
            if initial:
                raise ConfigError("CX_API_TOKENS_FILE: each token must have at least 16 "
                                  "characters and not be the documented placeholder")
            tokens = tuple(t for t in tokens if t not in weak)
            log.warning("CX_API_TOKENS_FILE: %d token(s) under 16 characters or placeholders "
                        "ignored", len(weak))
        if not self.readable:
            log.warning("CX_API_TOKENS_FILE: %r can be read again; its %d token(s) are "
                        "accepted", self._path, len(tokens))
        self._from_file, self._stamp, self.readable = tokens, stamp, True

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
        self._has_token_file = bool(settings.api_tokens_file)
        self.wallboard_public = settings.wallboard_public
        self.metrics_tokens = TokenSet((settings.metrics_token,) if settings.metrics_token
                                       else ())
        self.health_tokens = TokenSet((settings.health_token,) if settings.health_token else ())
        self.origins = frozenset(settings.cors_origins)
        self.max_body = settings.http_max_request_bytes
        self.limiter = RateLimiter(settings.api_rate_limit, settings.api_rate_burst, clock=clock)
        # None: any Host (CX_API_ALLOWED_HOSTS=*); checked only while the API needs no token.
        hosts = settings.api_allowed_hosts
        self.allowed_hosts = None if "*" in hosts else frozenset(hosts)
        self.rejected: Counter | None = None

    def register(self, registry: CollectorRegistry) -> None:
        self.rejected = Counter("cx_http_rejected", "HTTP requests refused, by reason",
                                ["reason"], registry=registry)
        for reason in ("unauthorized", "rate_limited", "too_large", "origin", "not_found",
                       "host", "method"):
            self.rejected.labels(reason)

    def readiness(self) -> dict[str, bool]:
        """For /readyz: with CX_API_TOKENS_FILE, whether it could be read at the last look."""
        if not self._has_token_file:
            return {}
        self.api_tokens.tokens()  # looks at the file again if a second has passed
        return {"api_tokens_file": self.api_tokens.readable}

    def _host_allowed(self, request: web.Request) -> bool:
        if self.allowed_hosts is None:
            return True
        header = request.headers.get("Host")
        name = host_name(header) if header else None
        return name is not None and name in self.allowed_hosts

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

    @staticmethod
    def _route_path(request: web.Request) -> str:
        """The path the router matched (its pattern), else the request's path: a path is
        judged by the handler it reaches, whatever its encoding."""
        resource = request.match_info.route.resource
        return resource.canonical if resource is not None else request.path

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = self._route_path(request)
        needs = self._tokens_for(path)
        if needs is False:
            return self._reject("not_found", _json(404, "not found"))
        personal = path.startswith("/api/") and not (
            path == WALLBOARD_DATA and self.wallboard_public)
        if personal and not self.api_auth and not self._host_allowed(request):
            return self._reject("host", _json(
                403, "this Host is not allowed: the API is served without a token only to "
                     "the host names of CX_API_ALLOWED_HOSTS"))
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
        response = await self._handle(request, handler, headers)
        response.headers.update(headers)
        if path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    async def _handle(self, request: web.Request, handler: Handler,
                      headers: dict[str, str]) -> web.StreamResponse:
        """The handler's answer; the router's refusals and any failure as a JSON error."""
        try:
            return await handler(request)
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            headers["Allow"] = allowed
            return self._reject("method", _json(
                405, f"method {request.method[:16]} not allowed here (allowed: {allowed})"))
        except web.HTTPNotFound:
            return self._reject("not_found", _json(404, "not found"))
        except web.HTTPException as exc:
            if exc.status >= 500:
                raise
            return _json(exc.status, exc.reason)
        except (RedisConnectionError, RedisTimeoutError, TimeoutError) as exc:
            log.warning("HTTP request not answered: Redis unavailable (%s)",
                        type(exc).__name__)
            headers["Retry-After"] = "1"
            return _json(503, "the service's storage cannot be reached; retry shortly")
        except Exception as exc:
            # The type and the place, not the message: it may hold a customer id.
            where = traceback.extract_tb(exc.__traceback__)[-1]
            log.error("HTTP request failed: %s at %s:%s", type(exc).__name__,
                      os.path.basename(where.filename), where.lineno)
            return _json(500, "internal error (logged by the worker)")
