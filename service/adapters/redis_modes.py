"""Redis deployment modes: one server, a Redis Cluster, or a primary watched by Sentinel.

The mode is the scheme of the Redis URL (docs/redis-modes.md), so every client built from
`CX_REDIS_URL` (the worker's state store, the HTTP API, the business gauges) uses the same one:

- `redis://host:port/db`, `rediss://...` (TLS), `unix:///path.sock?db=0`: one server;
- `redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://` for TLS):
  a Redis Cluster, given by one or more seed nodes; the other nodes are discovered;
- `redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`
  (`rediss+sentinel://` for TLS to the primary): the primary Sentinel names `service`,
  asked of the listed sentinels, and asked again after a failover.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, SlotNotCoveredError

from service.redis_url import parse_redis_url

RedisClient = aioredis.Redis | RedisCluster


class Script(Protocol):
    """A registered Lua script; `client=` may be a pipeline."""

    sha: str
    script: Any

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]: ...


def client_for(url: str, **options: Any) -> RedisClient:
    """A client of the URL's mode; `options` (timeouts, credentials, TLS settings) go to every
    connection to a Redis server, and win over a user or password in the URL."""
    target = parse_redis_url(url)
    if target.mode == "single":
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=64, timeout=5.0, **options)
        return aioredis.Redis.from_pool(pool)  # closing the client closes its pool
    given = {"username": target.username, "password": target.password,
             "ssl": True if target.tls else None}
    settings = {**{k: v for k, v in given.items() if v is not None}, **options}
    if target.mode == "cluster":
        return _ScriptReloadingCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes], **settings)
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel = Sentinel(list(target.nodes), **sentinel_options)  # type: ignore[no-untyped-call]
    master: aioredis.Redis = sentinel.master_for(target.service, db=target.db, **settings)
    return master


async def unlink_each(client: RedisClient, keys: Sequence[Any]) -> int:
    """UNLINK the keys, one command per key in one pipeline (keys of many hash slots on a
    Cluster, where redis-py's ClusterPipeline.unlink is never queued); how many existed."""
    if not keys:
        return 0
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.execute_command("UNLINK", key)
    return sum(int(n) for n in await pipe.execute())


def _unavailable(exc: Exception) -> RedisConnectionError:
    """No reachable node, or a slot no master serves (a master is down and not yet replaced):
    a connection error, which the worker waits out, as it does for a single server that is
    down. redis-py raises these as RedisClusterException, which is also what it raises for a
    command it cannot route (a defect)."""
    return RedisConnectionError(f"Redis Cluster unavailable: {exc}")


class _ScriptReloadingCluster(RedisCluster):
    """A cluster client whose pipelines survive a node that does not know a script, and that
    reports an unavailable cluster as a connection error.

    A single server's pipeline loads missing scripts itself before it runs; a cluster
    pipeline does not, and a node that restarted, joined or was promoted answers NOSCRIPT.
    NOSCRIPT means the script did not run, so loading the scripts on every primary and
    sending those commands again is safe.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scripts: dict[str, Any] = {}  # sha1 -> source, of the registered scripts

    async def initialize(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            raise _unavailable(exc) from exc

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except SlotNotCoveredError as exc:
            raise _unavailable(exc) from exc

    def register_script(self, script: Any) -> Any:
        registered = super().register_script(script)
        self.scripts[registered.sha] = registered.script
        return registered

    def pipeline(self, transaction: Any | None = None,
                 shard_hint: Any | None = None) -> ClusterPipeline:
        if transaction:
            return super().pipeline(transaction, shard_hint)
        return _ScriptReloadingPipeline(self)  # type: ignore[abstract]


class _Queued:
    """An awaitable that is already done: a command queued in a pipeline."""

    def __await__(self) -> Any:
        return iter(())


class _ScriptReloadingPipeline(ClusterPipeline):
    cluster_client: _ScriptReloadingCluster

    def evalsha(self, sha: Any, numkeys: int, *keys_and_args: Any) -> Any:
        """Queued like any other keyed command: sent to the node of its keys' slot (the client
        refuses a script whose keys hash to different slots). redis-py blocks EVALSHA in
        cluster pipelines because of NOSCRIPT, which `execute` below takes care of.

        Queued at once; what it returns may be awaited (registered scripts await it) and
        must not be the pipeline itself, since awaiting a cluster pipeline empties it."""
        self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)
        return _Queued()

    async def execute(self, raise_on_error: bool = True,
                      allow_redirections: bool = True) -> list[Any]:
        queued = [(c.args, dict(c.kwargs))
                  for c in self._execution_strategy._command_queue]  # type: ignore[attr-defined]
        try:
            replies = await super().execute(False, allow_redirections)
        except SlotNotCoveredError as exc:
            raise _unavailable(exc) from exc
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            client = self.cluster_client
            for source in client.scripts.values():
                await client.script_load(source)  # on every primary
            again = ClusterPipeline(client)  # type: ignore[abstract]
            for i in missing:
                args, kwargs = queued[i]
                again.execute_command(*args, **kwargs)
            for i, reply in zip(missing, await again.execute(False, allow_redirections),
                                strict=True):
                replies[i] = reply
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies
