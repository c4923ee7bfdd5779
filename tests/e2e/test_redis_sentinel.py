"""The worker on a Redis primary watched by Sentinel, through a `redis+sentinel://` URL: it
applies events, serves the API; when the primary dies it notices the promoted replica is
another Redis process (which may lack the last acknowledged writes), stops with exit code 75,
and once restarted (as a supervisor would) applies on the new primary, with what was written
before the failover intact."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.adapters.kafka_admin import ensure_topics
from service.adapters.redis_state import RedisState, connect
from service.config import load_settings
from tests.support.stack import LocalRedis, Namespace, Stack, Worker, produce, wait_until

pytestmark = pytest.mark.e2e
SERVICE = "cx-primary"  # the name deploy/local/stack.sh gives the primary


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[LocalRedis]:
    redis = LocalRedis("sentinel", tmp_path / "redis").start()
    try:
        yield redis
    finally:
        redis.stop()


def _calls(ns: Namespace, first: int, count: int) -> list[tuple[str, bytes, bytes]]:
    out = []
    for i in range(first, first + count):
        customer = f"cust-{i % 7}"
        event = {"event_id": f"e{i}", "occurred_at": f"2026-05-04T10:{i % 60:02d}:00Z",
                 "contact_id": f"c{i}", "customer_id": customer,
                 "started_at": f"2026-05-04T10:{i % 60:02d}:00Z", "channel": "voice",
                 "queue": "billing", "outcome": "handled", "agent_id": "a1"}
        out.append((ns.topic("call-ended"), customer.encode(), orjson.dumps(event)))
    return out


def _applied(ns: Namespace, url: str) -> int:
    async def read() -> int:
        store = RedisState(connect(url), ns.name, state_ttl=60, counter_ttl=60, contact_ttl=60)
        try:
            return sum(sum(c.applied.values()) for c in (await store.read_clocks(6)).values())
        finally:
            await store.client.aclose()

    try:
        return asyncio.run(read())
    except (OSError, RedisConnectionError, RedisTimeoutError):  # no primary for a moment
        return -1


def test_worker_applies_through_sentinel_and_follows_a_failover(
    stack: Stack, sentinel: LocalRedis, tmp_path: Path
) -> None:
    primary, replica, sentinel_port = sentinel.port, sentinel.port + 1, sentinel.port + 2
    assert sentinel.url == f"redis+sentinel://127.0.0.1:{sentinel_port}/{SERVICE}/0"
    ns = stack.namespace()
    asyncio.run(ensure_topics(load_settings({**ns.settings_env(),
                                             "CX_REDIS_URL": sentinel.url})))
    asyncio.run(produce(stack.kafka_bootstrap, _calls(ns, 0, 40)))
    worker = Worker(ns, tmp_path / "worker.log", CX_REDIS_URL=sentinel.url)
    try:
        worker.wait_ready()
        wait_until(lambda: _applied(ns, sentinel.url) == 40, timeout=60,
                   what="the first events applied through the sentinel")
        # Written to the primary, and replicated: the replica holds the partition clocks.
        assert "role:master" in sentinel.cli(primary, "info", "replication")
        wait_until(lambda: _applied(ns, f"redis://127.0.0.1:{replica}/0") == 40, timeout=60,
                   what="the state replicated")

        # The primary dies; the sentinel promotes the replica; the worker follows it.
        pid = int((sentinel.state_dir / f"redis-{primary}/redis.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: str(replica) in sentinel.cli(
            sentinel_port, "sentinel", "get-master-addr-by-name", SERVICE), timeout=60,
            what="the sentinel promoting the replica")
        wait_until(lambda: "role:master" in sentinel.cli(replica, "info", "replication"),
                   timeout=30, what="the replica promoted")

        asyncio.run(produce(stack.kafka_bootstrap, _calls(ns, 40, 20)))
        wait_until(lambda: worker.proc.poll() is not None, timeout=90,
                   what="the worker stopping on the new primary")
        assert worker.proc.returncode == 75, worker.logs()
        worker = Worker(ns, tmp_path / "worker-restarted.log", CX_REDIS_URL=sentinel.url)
        worker.wait_ready()
        try:
            wait_until(lambda: _applied(ns, sentinel.url) == 60, timeout=90,
                       what="events after the failover applied on the new primary")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; applied {_applied(ns, sentinel.url)}\n"
                                 f"{worker.logs()}") from None
        assert "role:master" in sentinel.cli(replica, "info", "replication")
        status, body = worker.get("/api/v1/customers/cust-3")
        assert status == 200, body
        contacts = [c["contact_id"] for c in json.loads(body)["recent_contacts"]]
        assert "c59" in contacts  # written after the failover
        assert "c3" in contacts  # written before it, and carried over by replication
        wait_until(lambda: worker.get("/readyz")[0] == 200, timeout=30, what="ready again")
    finally:
        assert worker.stop() == 0, worker.logs()
