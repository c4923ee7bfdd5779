from __future__ import annotations

import re

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from service.adapters.redis_modes import client_for
from service.config import ConfigError, load_settings
from service.redis_url import RedisTarget, parse_redis_url


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("redis://127.0.0.1:6379/0", RedisTarget("single", "redis://127.0.0.1:6379/0")),
        ("unix:///run/redis.sock", RedisTarget("single", "unix:///run/redis.sock")),
        ("redis+cluster://10.0.0.1:7000,10.0.0.2:7001",
         RedisTarget("cluster", "redis+cluster://10.0.0.1:7000,10.0.0.2:7001",
                     (("10.0.0.1", 7000), ("10.0.0.2", 7001)))),
        ("rediss+cluster://cx:s%40cret@node-1:7000/0",
         RedisTarget("cluster", "rediss+cluster://cx:s%40cret@node-1:7000/0",
                     (("node-1", 7000),), username="cx", password="s@cret", tls=True)),
        ("redis+sentinel://127.0.0.1:26379,[::1]:26380/cx-primary/2",
         RedisTarget("sentinel", "redis+sentinel://127.0.0.1:26379,[::1]:26380/cx-primary/2",
                     (("127.0.0.1", 26379), ("::1", 26380)), "cx-primary", 2)),
        ("redis+sentinel://:pw@s1:26379/main",
         RedisTarget("sentinel", "redis+sentinel://:pw@s1:26379/main", (("s1", 26379),),
                     "main", 0, None, "pw")),
    ],
)
def test_the_scheme_picks_the_mode(url: str, target: RedisTarget) -> None:
    assert parse_redis_url(url) == target


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("localhost:6379", "expected a Redis URL"),
        ("memcached://h:1", "unknown Redis URL scheme"),
        ("redis+cluster://h1:7000,h2", "expected host:port"),
        ("redis+cluster://h1:7000/3", "database 0 only"),
        ("redis+cluster://h1:99999", "expected host:port"),
        ("redis+sentinel://s1:26379", "service"),
        ("redis+sentinel://s1:26379/main/x", "must be a number"),
        ("redis+sentinel://s1:26379/main?ssl=1", "no query parameters"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_redis_url(url)
    with pytest.raises(ConfigError, match=r"^CX_REDIS_URL: "):
        load_settings({"CX_REDIS_URL": url})


def test_each_mode_gets_its_client_without_connecting() -> None:
    single = client_for("redis://127.0.0.1:1/3")
    assert type(single) is aioredis.Redis
    assert single.connection_pool.connection_kwargs["db"] == 3

    cluster = client_for("redis+cluster://cx:pw@127.0.0.1:1,127.0.0.1:2",
                         socket_timeout=10.0, health_check_interval=15)
    assert isinstance(cluster, RedisCluster)
    assert sorted(cluster.nodes_manager.startup_nodes) == ["127.0.0.1:1", "127.0.0.1:2"]
    assert cluster.connection_kwargs["password"] == "pw"
    assert cluster.connection_kwargs["socket_timeout"] == 10.0

    primary = client_for("redis+sentinel://127.0.0.1:1/cx-primary/2", socket_timeout=10.0)
    assert isinstance(primary, aioredis.Redis)
    pool = primary.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "cx-primary"
    assert pool.connection_kwargs["db"] == 2
    assert pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs["port"] == 1


def test_scripts_touch_only_the_keys_they_are_given() -> None:
    """Redis Cluster routes a script by its KEYS: a key built inside a script could live on
    another node. Every command of the scripts must name a key from KEYS."""
    from importlib import resources

    lua = resources.files("service.adapters").joinpath("lua")
    scripts = {f.name: f.read_text() for f in lua.iterdir() if f.name.endswith(".lua")}
    assert set(scripts) >= {"commit_partition.lua", "put_contact.lua"}
    for name, text in scripts.items():
        calls = re.findall(r"redis\.call\(\s*('[A-Z]+'|cmd)\s*,\s*([^,)]+)", text)
        assert calls, name
        for command, key in calls:
            assert key.startswith("KEYS[") or (command, key) == ("cmd", "key"), (name, key)
        for key in re.findall(r"call_chunked\(\s*'[A-Z]+'\s*,\s*([^,)]+)", text):
            assert key.startswith("KEYS["), (name, key)


def test_an_unreachable_cluster_is_a_dependency_failure_the_worker_waits_out() -> None:
    import asyncio

    from redis.exceptions import ConnectionError as RedisConnectionError

    from service.adapters.failures import is_transient
    from service.adapters.redis_state import connect

    async def attempt() -> BaseException:
        client = connect("redis+cluster://127.0.0.1:1")  # nothing listens on port 1
        try:
            await client.ping()
        except Exception as exc:
            return exc
        finally:
            await client.aclose()
        raise AssertionError("ping succeeded")

    failure = asyncio.run(attempt())
    assert isinstance(failure, RedisConnectionError), repr(failure)
    assert "Redis Cluster unavailable" in str(failure)
    assert is_transient(failure)


def test_credentials_given_apart_from_the_url_win() -> None:
    cluster = client_for("redis+cluster://url-user:url-pw@127.0.0.1:1", password="file-pw")
    assert isinstance(cluster, RedisCluster)
    assert cluster.connection_kwargs["password"] == "file-pw"
    assert cluster.connection_kwargs["username"] == "url-user"
    primary = client_for("rediss+sentinel://127.0.0.1:1/main", username="cx", password="pw")
    kwargs = primary.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("cx", "pw")
    assert primary.connection_pool.connection_class.__name__ == "SentinelManagedSSLConnection"
    tls_cluster = client_for("rediss+cluster://127.0.0.1:1")
    assert tls_cluster.connection_kwargs["connection_class"].__name__ == "SSLConnection"
    plain_cluster = client_for("redis+cluster://127.0.0.1:1")
    assert plain_cluster.connection_kwargs["connection_class"].__name__ == "Connection"
