"""The cost of one 400-day FCR read, three ways, against a Redis you name (it writes keys under
the prefix `fcr-cost`, deleted at the end): worker-side CPU and time per request, and the
time Redis spent (its command statistics).

    .venv/bin/python -m bench.fcr_cost redis://127.0.0.1:PORT/0

The counters: six partitions, a month of hours with data in a 400-day range (as the
benchmark's workload), three fields read per hour.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time

from service.adapters.redis_state import RedisState, connect

HOUR = 3600
FIELDS = ["all|fcr_total", "all|unresolved", "all|resolved"]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _total(state: RedisState, way: str, hours: list[int]) -> list[int]:
    if way == "one pipeline":
        return await state.read_counters(6, hours, FIELDS)
    step = 24 if way == "a pipeline a day" else 168
    totals = [0, 0, 0]
    for i in range(0, len(hours), step):
        if step == 24:
            part = await state.read_counters(6, hours[i:i + step], FIELDS)
        else:
            part = await state.sum_counters(6, hours[i:i + step], FIELDS)
        totals = [a + b for a, b in zip(totals, part, strict=True)]
    return totals


async def main(url: str) -> None:
    state = RedisState(connect(url), "fcr-cost", state_ttl=60, counter_ttl=60, contact_ttl=60)
    first = 915148800  # 1999-01-01T00:00:00Z
    hours = list(range(first, first + 400 * 24 * HOUR, HOUR))
    pipe = state.client.pipeline(transaction=False)
    for hour in hours[200 * 24:231 * 24]:
        for partition in range(6):
            pipe.hset(state.hour_key(partition, hour), mapping={
                "all|fcr_total": 5, "all|unresolved": 1, "all|resolved": 2})
    await pipe.execute()
    try:
        for way in ("one pipeline", "a pipeline a day", "a script call a week"):
            await state.client.config_resetstat()
            walls, cpus = [], []
            for _ in range(5):
                wall, cpu = time.perf_counter(), _cpu()
                totals = await _total(state, way, hours)
                walls.append(time.perf_counter() - wall)
                cpus.append(_cpu() - cpu)
            stats = await state.client.info("commandstats")
            spent = sum(v["usec"] for k, v in stats.items() if k in (
                "cmdstat_hmget", "cmdstat_evalsha")) / 5 / 1000
            print(f"{way:22} totals {totals}: per request {sorted(walls)[2] * 1000:6.0f} ms, "
                  f"client CPU {sorted(cpus)[2] * 1000:5.0f} ms, Redis {spent:5.0f} ms")
    finally:
        keys = [k async for k in state.client.scan_iter(match="fcr-cost:*", count=1000)]
        for i in range(0, len(keys), 1000):
            await state.client.delete(*keys[i:i + 1000])
        await state.client.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
