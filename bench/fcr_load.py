"""Ingest throughput of one worker replaying pre-loaded events, with and without 8 clients
asking `/api/v1/fcr` for 400-day ranges all the time (each sends its next request when the
previous one is answered).

    .venv/bin/python -m bench.fcr_load [EVENTS] [RUNS] [--before DIR]

EVENTS (default 60,000) of the benchmark's workload are loaded once into topics of their own
on the benchmark's own Kafka and Redis (bench/stack.py); each run replays them with a fresh
consumer group and key prefix. Runs alternate between the settings, RUNS times each (default
2). `--before DIR`: also run the worker of another source tree (e.g. an export of an earlier
commit, `git archive COMMIT | tar -x -C DIR`) under the same load, for a before/after.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis

import tests.support.stack as stack_module
from bench import workload
from bench.e2e import create_topics, preload, progress, run_workers
from bench.stack import local_stack
from tests.support.stack import Namespace

WORKER_ENV = {"CX_BATCH_MAX_EVENTS": "5000", "CX_BATCH_MAX_WAIT": "50ms",
              "CX_METRICS_REFRESH": "15s", "CX_COMMIT_INTERVAL": "1s"}
# 400 days around the workload's month (August 1999, repeated every 35 days).
RANGE = "from=1999-01-01T00:00:00Z&to=2000-02-05T00:00:00Z"
CLIENTS = 8
TIMEOUT = 600.0


@dataclasses.dataclass
class SharedTopics(Namespace):
    """A namespace of its own (group, Redis prefix, port) reading another one's topics."""

    topics_of: str = ""

    def topic(self, kind: str) -> str:
        return f"{self.topics_of}-{kind}"


class FcrLoad:
    """CLIENTS closed-loop clients on a thread of their own, until stopped."""

    def __init__(self, port: int, clients: int) -> None:
        self.url = f"http://127.0.0.1:{port}/api/v1/fcr?{RANGE}"
        self.clients = clients
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> FcrLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                async with session.get(self.url) as response:
                    await response.read()
                    status = response.status
            except aiohttp.ClientError:  # the worker is not listening yet, or stopping
                await asyncio.sleep(0.2)
                continue
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200:
                self.latencies.append(time.perf_counter() - started)

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*[self._client(session) for _ in range(self.clients)])


def replay(stack: Any, ns: Namespace, total: int, partitions: int, logs: Path
           ) -> dict[str, Any]:
    """run_workers; a replay that does not finish within TIMEOUT counts what it applied."""
    started = time.perf_counter()
    try:
        return run_workers(stack, ns, total, partitions, 1, logs, WORKER_ENV, timeout=TIMEOUT)
    except RuntimeError as exc:
        client = redis.Redis.from_url(stack.redis_url)
        done, _ = progress(client, ns, partitions)
        client.close()
        return {"events": total, "events_per_s": done / (time.perf_counter() - started),
                "cpu_s": float("nan"), "seconds": TIMEOUT, "startup_s": 0.0,
                "note": f" (did not finish: {done} of {total} applied in {TIMEOUT:.0f} s; "
                        f"{str(exc)[:60]})"}


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    before = sys.argv[sys.argv.index("--before") + 1] if "--before" in sys.argv else None
    if before:
        args.remove(before)
    events = int(args[0]) if args else 60_000
    runs = int(args[1]) if len(args) > 1 else 2
    trees = {"after": stack_module.ROOT}
    if before:
        trees["before"] = Path(before).resolve()
    logs = Path(tempfile.mkdtemp(prefix="fcr-load-"))
    results: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    with local_stack() as stack:
        base = stack.namespace()
        partitions = asyncio.run(create_topics(base))
        messages = workload.messages(events)
        asyncio.run(preload(stack.kafka_bootstrap, base, messages))
        total = len(messages)
        print(f"{total} events pre-loaded; worker logs in {logs}", flush=True)
        for run in range(runs):
            for tree, root in trees.items():
                for loaded in (False, True):
                    ns = SharedTopics(stack, f"{base.name}-{tree[0]}{int(loaded)}{run}",
                                      topics_of=base.name)
                    stack_module.ROOT = root  # the worker runs `python -m service` there
                    try:
                        with FcrLoad(ns.http_port, CLIENTS if loaded else 0) as load:
                            result = replay(stack, ns, total, partitions, logs)
                        result["fcr"] = load
                    finally:
                        stack_module.ROOT = trees["after"]
                    results.setdefault((tree, loaded), []).append(result)
                    print(f"{tree:6} {'8 FCR clients' if loaded else 'no FCR':14} "
                          f"{result['events_per_s']:8,.0f} events/s, "
                          f"{1e6 * result['cpu_s'] / total:5.0f} us CPU/event"
                          f"{result.get('note', '')}", flush=True)
    print()
    print("| worker | FCR load | ingest, events/s (runs) | worker CPU per event | FCR answers "
          "| FCR latency p50 / max |")
    print("|---|---|---|---|---|---|")
    for (tree, loaded), found in results.items():
        rates = [r["events_per_s"] for r in found]
        cell = (f"{statistics.median(rates):,.0f} "
                f"({', '.join(f'{x:,.0f}' for x in rates)})")
        cpus = [1e6 * r["cpu_s"] / r["events"] for r in found if r["cpu_s"] == r["cpu_s"]]
        cpu = f"{statistics.median(cpus):,.0f} us" if cpus else "-"
        answers = latency = ""
        if loaded:
            loads: list[FcrLoad] = [r["fcr"] for r in found]
            seconds = sum(r["seconds"] + r["startup_s"] for r in found)
            statuses: dict[int, int] = {}
            for load in loads:
                for status, n in load.statuses.items():
                    statuses[status] = statuses.get(status, 0) + n
            answered = statuses.get(200, 0)
            answers = (f"{answered} in {seconds:.0f} s"
                       + "".join(f", {n} x {s}" for s, n in sorted(statuses.items())
                                 if s != 200))
            lat = sorted(x for load in loads for x in load.latencies)
            if lat:
                latency = f"{statistics.median(lat):.2f} s / {lat[-1]:.2f} s"
        print(f"| {tree} | {'8 clients, 400 days' if loaded else 'none'} | {cell} | {cpu} | "
              f"{answers} | {latency} |")


if __name__ == "__main__":
    main()
