"""Where Redis is: the mode and addresses a `CX_REDIS_URL` names (docs/redis-modes.md).

Pure URL parsing, below the adapters: the configuration checks the URL with it when it is
read, and the Redis adapters build their clients from what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

RedisMode = Literal["single", "cluster", "sentinel"]

_SCHEMES: dict[str, tuple[RedisMode, bool]] = {
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is, as a CX_REDIS_URL says."""

    mode: RedisMode
    url: str
    nodes: tuple[tuple[str, int], ...] = ()  # cluster seed nodes or sentinels
    service: str = ""  # the Sentinel service name of the primary
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_redis_url(url: str) -> RedisTarget:
    """The mode and addresses of a Redis URL; ValueError says what is wrong with it."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"expected a Redis URL such as redis://host:6379/0, got {url!r}")
    if scheme in ("redis", "rediss", "unix"):
        return RedisTarget("single", url)
    if scheme not in _SCHEMES:
        raise ValueError(f"unknown Redis URL scheme {scheme!r} (known: redis, rediss, unix, "
                         f"{', '.join(_SCHEMES)})")
    mode, tls = _SCHEMES[scheme]
    netloc, _, path = rest.partition("/")
    path, _, query = path.partition("?")
    if query:
        raise ValueError(f"{scheme}:// URLs take no query parameters, got {query!r}")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = tuple(_host_port(h, scheme) for h in hosts.split(","))
    parts = [p for p in path.split("/") if p]
    if mode == "cluster":
        if parts not in ([], ["0"]):
            raise ValueError("a Redis Cluster has database 0 only; "
                             f"expected {scheme}://host:port[,host:port...], got {url!r}")
        return RedisTarget(mode, url, nodes, "", 0, username, password, tls)
    if not parts or len(parts) > 2:
        raise ValueError(f"expected {scheme}://host:port[,host:port...]/service[/db], "
                         f"got {url!r}")
    db = parts[1] if len(parts) == 2 else "0"
    if not db.isdigit():
        raise ValueError(f"the database must be a number, got {db!r}")
    return RedisTarget(mode, url, nodes, unquote(parts[0]), int(db), username, password, tls)


def _host_port(text: str, scheme: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")  # [::1]:7000
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port in a {scheme}:// URL, got {text!r}")
    return host, int(port)
