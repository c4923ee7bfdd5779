"""A `cx-stream worker` with a heap census: tracemalloc runs from the start, and each time a
file BENCH_HEAP_OUT + ".please" appears, where the traced memory is (by package and by line)
is written as JSON to BENCH_HEAP_OUT (and the request file removed).

Run as `python -m bench.heap_worker` with the worker's CX_* variables (bench/__main__.py's
`heap` phase does). Tracing slows the worker down; the census is of where the memory is,
not of how fast.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import tracemalloc
from typing import Any

import orjson

GROUPS = (  # (label, path fragment), first match wins
    ("aiokafka (fetch buffers, records)", "/aiokafka/"),
    ("faust and mode (streams, events, acks)", "/faust/"),
    ("faust and mode (streams, events, acks)", "/mode/"),
    ("redis client", "/redis/"),
    ("prometheus_client", "/prometheus_client/"),
    ("cx-stream: state cache", "service/service_layer/state_cache.py"),
    ("cx-stream: memo", "service/domain/memo.py"),
    ("cx-stream: perception curve", "service/domain/perception.py"),
    ("cx-stream: records and states", "service/domain/records.py"),
    ("cx-stream: event decoding and validation", "service/domain/validation.py"),
    ("cx-stream: event decoding and validation", "service/adapters/codec.py"),
    ("cx-stream: redis adapter", "service/adapters/redis_state.py"),
    ("cx-stream: domain, other", "service/domain/"),
    ("cx-stream: batch (ingest, plans, outbox)", "service/service_layer/"),
    ("cx-stream: other", "service/"),
    ("imports (<frozen importlib>)", "<frozen"),
)


def _group(filename: str) -> str:
    for label, fragment in GROUPS:
        if fragment in filename:
            return label
    return "other (stdlib, other libraries)"


def census() -> dict[str, Any]:
    snapshot = tracemalloc.take_snapshot()
    by_file = snapshot.statistics("filename")
    groups: dict[str, int] = {}
    for stat in by_file:
        label = _group(stat.traceback[0].filename)
        groups[label] = groups.get(label, 0) + stat.size
    top = [(f"{s.traceback[0].filename}:{s.traceback[0].lineno}", s.size, s.count)
           for s in snapshot.statistics("lineno")[:25]]
    rss = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    traced, peak = tracemalloc.get_traced_memory()
    return {"rss": rss, "traced": traced, "traced_peak": peak,
            "groups": sorted(groups.items(), key=lambda kv: -kv[1]), "top_lines": top}


def main() -> None:
    out = os.environ["BENCH_HEAP_OUT"]
    tracemalloc.start(1)

    def watch() -> None:  # Faust's worker owns the signals (SIGUSR1 dumps its tasks)
        while True:
            time.sleep(0.2)
            if os.path.exists(out + ".please"):
                data = census()
                with open(out + ".tmp", "wb") as f:
                    f.write(orjson.dumps(data))
                os.replace(out + ".tmp", out)
                os.remove(out + ".please")

    threading.Thread(target=watch, daemon=True).start()
    from service.cli import main as cli

    sys.argv = ["cx-stream", "worker"]
    raise SystemExit(cli())


if __name__ == "__main__":
    main()
