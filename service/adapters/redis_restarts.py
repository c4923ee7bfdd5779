"""Redis that lost acknowledged writes: the restart guard and the rewind (docs/reliability.md).

Redis may lose the writes of its last second when it dies (AOF `everysec`) although it
acknowledged them, and their offsets may already be committed to Kafka. Two guards keep that
from losing events: a worker that finds Redis restarted under it (a new run id) stops with
exit code 75 before writing anything (`guard_redis_restarts`); and on every partition
assignment the worker seeks each input partition back to the offset after the last one applied
in Redis when Kafka's committed offset is ahead of it (`rewind_to_applied`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import faust
from faust.types import TP

from service.adapters.failures import is_transient
from service.adapters.redis_state import RedisState
from service.domain.partition import PartitionClock

log = logging.getLogger("service.worker")  # the worker's log lines, under its name as before
EXIT_DEFECT = 70  # EX_SOFTWARE: a failure retrying cannot cure
EXIT_REDIS_RESTARTED = 75  # EX_TEMPFAIL: restart me, I will resume from what Redis holds


class RedisRestarted(Exception):
    """Redis is a new process since this worker first connected: it may have lost writes it
    had acknowledged, which only a restart of the worker (and its rewind) can re-apply."""


def guard_redis_restarts(client: Any) -> None:
    """Check Redis' run id on every new connection; once it changed, refuse every connection,
    so that nothing is written to the new Redis from positions it may no longer hold.

    One server or Sentinel only: a Redis Cluster client has no single pool to guard, and a
    cluster node that lost writes is covered by the rewind when the worker next restarts
    (docs/redis-modes.md)."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        return
    first: list[str] = []

    async def on_connect(connection: Any) -> None:
        await connection.on_connect()
        await connection.send_command("INFO", "server")
        info = await connection.read_response()
        text = info.decode() if isinstance(info, bytes) else str(info)
        run_id = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                       if line.startswith("run_id:")), "")
        if not first:
            first.append(run_id)
        elif run_id != first[0]:
            await connection.disconnect()
            # Stop even when no batch is in hand (an idle worker, or a gauge refresh found it).
            asyncio.get_running_loop().call_soon(_stop_redis_restarted)
            raise RedisRestarted(f"Redis restarted (run id {first[0]} is now {run_id}); "
                                 "restarting from the offsets it holds")

    pool.connection_kwargs["redis_connect_func"] = on_connect


def _stop_redis_restarted() -> None:
    log.critical("stopping: Redis restarted and may have lost acknowledged writes; a restart "
                 "reads again from the offsets it holds")
    logging.shutdown()
    os._exit(EXIT_REDIS_RESTARTED)


def rewind_to_applied(app: faust.App, state: RedisState, input_topics: Sequence[str],
                      partitions: int) -> None:
    """When Faust seeks newly assigned partitions to Kafka's committed offsets, seek each input
    partition whose committed offset is ahead of the last offset applied in Redis back to the
    one after it. Events already applied are recognised by offset and not applied twice."""
    consumer: Any = app.consumer  # the transport's consumer (seek_to_committed is not on ConsumerT)
    seek_to_committed: Callable[[], Awaitable[Mapping[TP, int]]] = consumer.seek_to_committed

    async def seek_to_applied() -> Mapping[TP, int]:
        positions = dict(await seek_to_committed())
        inputs = [tp for tp, offset in positions.items()
                  if tp.topic in input_topics and offset is not None and offset > 0]
        if not inputs:
            return positions
        clocks = await _clocks_retrying(state, partitions)
        for tp in inputs:
            applied = clocks[tp.partition].offsets.get(tp.topic)
            target = 0 if applied is None else applied + 1
            if target < positions[tp]:
                log.warning("%s[%d]: Kafka's committed offset %d is ahead of Redis (%s); "
                            "reading again from %d", tp.topic, tp.partition, positions[tp],
                            "nothing applied" if applied is None else f"applied {applied}",
                            target)
                await consumer.seek(tp, target)
                positions[tp] = target
        return positions

    consumer.seek_to_committed = seek_to_applied


async def _clocks_retrying(state: RedisState, partitions: int) -> dict[int, PartitionClock]:
    """Every partition's clock, waiting up to a minute for a Redis that is down or busy; a
    failure waiting cannot cure, or a Redis that restarted, stops the worker."""
    delay = 0.1
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        try:
            return await state.read_clocks(partitions)
        except Exception as exc:
            if not isinstance(exc, RedisRestarted) and not is_transient(exc):
                log.critical("stopping: cannot read the applied offsets from Redis: %s", exc)
                logging.shutdown()
                os._exit(EXIT_DEFECT)  # e.g. an ACL without a command: retrying cannot cure it
            if isinstance(exc, RedisRestarted) or asyncio.get_running_loop().time() > deadline:
                # Waiting longer inside a rebalance would only make the group evict this
                # member: a supervisor's restart starts the assignment again.
                log.critical("stopping: cannot read the applied offsets from Redis: %s", exc)
                logging.shutdown()
                os._exit(EXIT_REDIS_RESTARTED)
            log.warning("applied offsets not read (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
