"""Cost of the worker's Redis round trips per Redis mode: one server vs a 3-master cluster.

    .venv/bin/python bench/redis_modes.py [ROUNDS]

Starts one Redis and a 3-master Redis Cluster with deploy/local/stack.sh (in a temporary
folder, on free ports), then per mode runs ROUNDS batches of what the worker does for a batch
of 6 partitions x 80 customers: commit (one script per partition), load the states back, and
finish the outbox (50 contact views, 6 trims). Prints wall-clock and client CPU time per batch.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.adapters.redis_state import RedisState, connect  # noqa: E402
from service.domain.engine import apply_event, new_state  # noqa: E402
from service.domain.partition import PartitionCommit  # noqa: E402
from tests.support.stack import free_port_run  # noqa: E402
from tests.unit.builders import call  # noqa: E402

PARTITIONS, CUSTOMERS, OUTBOX, VIEWS = 6, 80, 20, 50


async def batches(url: str, rounds: int) -> tuple[float, float]:
    store = RedisState(connect(url), f"bench{uuid.uuid4().hex[:6]}", state_ttl=600,
                       counter_ttl=600, contact_ttl=600)
    state = new_state(call("a", 0))
    apply_event(state, call("a", 0))
    names = [f"c:cust-{i}" for i in range(CUSTOMERS)]
    seqs = dict.fromkeys(range(PARTITIONS), "")
    wall = cpu = 0.0
    for r in range(rounds):
        commits = {p: PartitionCommit(seqs[p], dict.fromkeys(names, state),
                                      {3600: {"all|contacts": 1, "queue:x|contacts": 1}},
                                      {n: 100.0 for n in names[:10]}, [], {"wm": "1"},
                                      [b"x" * 300] * OUTBOX) for p in range(PARTITIONS)}
        started_wall, started_cpu = time.perf_counter(), time.process_time()
        assert await store.commit(commits) == set()
        data = await store.load(dict.fromkeys(range(PARTITIONS), names))
        await store.finish_outbox(dict.fromkeys(range(PARTITIONS), OUTBOX),
                                  [(f"k{i}", r + 1, b"{}") for i in range(VIEWS)])
        wall += time.perf_counter() - started_wall
        cpu += time.process_time() - started_cpu
        seqs = {p: d.clock.seq for p, d in data.items()}
    await store.client.aclose()
    return wall / rounds, cpu / rounds


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    script = str(ROOT / "deploy/local/stack.sh")
    with tempfile.TemporaryDirectory(prefix="cx-bench-") as folder:
        for mode in ("single", "cluster"):
            env = {k: v for k, v in os.environ.items() if k != "CX_REDIS_URL"}
            env.update(CX_STACK_DIR=f"{folder}/{mode}", CX_LOCAL_REDIS=mode,
                       CX_REDIS_PORT=str(free_port_run(3, bus_offset=10000)))
            subprocess.run([script, "start", "redis"], env=env, check=True,
                           capture_output=True)
            try:
                printed = subprocess.run([script, "env"], env=env, check=True,
                                         capture_output=True, text=True).stdout
                url = dict(line.split("=", 1) for line in printed.split())["CX_REDIS_URL"]
                wall, cpu = asyncio.run(batches(url, rounds))
                print(f"{mode:8s} {rounds} batches of {PARTITIONS} partitions x {CUSTOMERS} "
                      f"customers: {wall * 1000:.1f} ms wall, {cpu * 1000:.1f} ms client CPU "
                      "per batch")
            finally:
                subprocess.run([script, "stop", "redis"], env=env, capture_output=True)


if __name__ == "__main__":
    main()
