"""`make bench` (python -m bench): every measurement of docs/benchmarks.md, in one run.

BENCH_SCALE=small runs a quick version (fewer events, shorter phases) to iterate with;
BENCH_RUNS sets how many times the fold and the pass-through run (medians are reported),
BENCH_E2E_RUNS how many times each end-to-end replay runs (1 in the full run, else BENCH_RUNS);
BENCH_WRITE=0 prints the table without updating docs/benchmarks.md;
BENCH_PHASES (comma-separated, default all) runs only some phases: fold, passthrough, e2e,
floor (a Faust app that only acknowledges: the most a Faust worker reaches), peers (the core
job written with Faust Tables and with quix-streams, on the same events), rebuild (`cx-stream
rebuild` with one process and with one per core), scale, redis,
latency, memory, heap (a tracemalloc census of a replaying worker, of at most 200,000 events or
BENCH_HEAP_EVENTS) (e.g.
BENCH_PHASES=passthrough,e2e for the end-to-end ratio);
BENCH_E2E_EVENTS and BENCH_MEMORY_EVENTS change the scale's event counts; BENCH_PROFILE=DIR
records a py-spy profile of each end-to-end worker into DIR (py-spy must be
installed in the venv).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis

from bench import e2e, fold, live, workload
from bench.stack import ROOT, local_stack
from tests.support.stack import Namespace, Stack, Worker, free_port


@dataclass(frozen=True)
class Scale:
    name: str
    fold_events: int
    e2e_events: int
    memory_events: int
    latency_seconds: float
    lookup_seconds: float
    timeout: float


PHASES = ("fold", "passthrough", "floor", "e2e", "peers", "rebuild", "scale", "redis",
          "latency", "memory", "heap")

SCALES = {
    "small": Scale("small", 30_000, 60_000, 150_000, 10, 5, 600),
    "full": Scale("full", 100_000, 500_000, 2_000_000, 30, 15, 1800),
}

WORKER_ENV = {"CX_BATCH_MAX_EVENTS": "5000", "CX_BATCH_MAX_WAIT": "50ms",
              "CX_METRICS_REFRESH": "15s", "CX_COMMIT_INTERVAL": "1s"}


@dataclass
class SharedTopics(Namespace):
    """A namespace of its own (group, Redis prefix, port) reading another one's topics."""

    topics_of: str = ""

    def topic(self, kind: str) -> str:
        return f"{self.topics_of}-{kind}"


def log(text: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def machine() -> str:
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({model or platform.machine()}), "
            f"{mem_kb / 1024 / 1024:.0f} GB, Python {platform.python_version()}, "
            f"load average at start {os.getloadavg()[0]:.2f}")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return ""
    return f" (runs: {', '.join(f'{v:,.0f}' for v in values)})"


def main() -> None:
    scale = SCALES[os.environ.get("BENCH_SCALE", "full")]
    if os.environ.get("BENCH_E2E_EVENTS"):
        scale = dataclasses.replace(scale, e2e_events=int(os.environ["BENCH_E2E_EVENTS"]))
    if os.environ.get("BENCH_MEMORY_EVENTS"):
        scale = dataclasses.replace(scale, memory_events=int(os.environ["BENCH_MEMORY_EVENTS"]))
    runs = int(os.environ.get("BENCH_RUNS", "3"))
    # A full end-to-end run replays 500,000 events: once by default, BENCH_E2E_RUNS for more.
    e2e_runs = int(os.environ.get("BENCH_E2E_RUNS", "1" if scale.name == "full" else runs))
    phases = _phases()
    # A table of only some phases must not replace the full one in docs/benchmarks.md.
    write = os.environ.get("BENCH_WRITE", "1") != "0" and phases == set(PHASES)
    logs = ROOT / ".cx-bench" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    started_at = datetime.now(UTC)
    rows: list[tuple[str, str, str, str]] = []  # (measure, figure, target, note)
    env_machine = machine()

    log("building the workload from the Anonymous Bank month")
    base = workload.synthesize(workload.month_calls())
    need = max(scale.fold_events, scale.e2e_events)
    messages = workload.messages(need, base)

    # 1. fold ------------------------------------------------------------------------------
    if "fold" in phases:
        events = fold.prepare(messages[: scale.fold_events])
        fold_rates = []
        for i in range(runs):
            r = fold.run(events)
            fold_rates.append(r["events_per_s"])
            log(f"fold run {i + 1}: {r['events_per_s']:,.0f} events/s")
        fold_rate = median(fold_rates)
        rows.append(("Fold: apply + settle after every event, one core",
                     f"{fold_rate:,.0f} events/s{spread(fold_rates)}", ">= 100,000 events/s",
                     f"{scale.fold_events:,} events of the workload"))

    if phases & {"passthrough", "floor", "e2e", "peers", "rebuild", "scale", "redis",
                  "latency", "memory", "heap"}:
        with local_stack() as stack:
            rows.extend(_on_stack(stack, scale, runs, e2e_runs, phases, messages, base, logs))

    elapsed = time.perf_counter() - began
    command = f"make bench BENCH_SCALE={scale.name} BENCH_RUNS={runs}"
    table = _table(rows)
    print(table)
    print(f"\n{command}: {elapsed / 60:.1f} min on {env_machine}")
    if write:
        _write_doc(table, command, started_at, env_machine, elapsed)



def _phases() -> set[str]:
    named = os.environ.get("BENCH_PHASES", "")
    phases = {p.strip() for p in named.split(",") if p.strip()} if named else set(PHASES)
    unknown = phases - set(PHASES)
    if unknown:
        raise SystemExit(f"BENCH_PHASES: unknown {', '.join(sorted(unknown))}; "
                         f"phases are {', '.join(PHASES)}")
    return phases


def _on_stack(stack: Stack, scale: Scale, runs: int, e2e_runs: int, phases: set[str],
              messages: list[tuple[str, bytes, bytes]],
              base: list[tuple[float, str, dict[str, Any]]], logs: Path
              ) -> list[tuple[str, str, str, str]]:
    """The phases on the real stack, in order; their table rows."""
    rows: list[tuple[str, str, str, str]] = []
    profile = os.environ.get("BENCH_PROFILE")
    if phases & {"passthrough", "floor", "e2e", "peers", "rebuild", "scale", "redis"}:
        ns = stack.namespace()
        partitions = asyncio.run(e2e.create_topics(ns))
        log(f"pre-loading {scale.e2e_events:,} events into {partitions} partitions")
        preload_s = asyncio.run(e2e.preload(stack.kafka_bootstrap, ns,
                                            messages[: scale.e2e_events]))
        log(f"pre-loaded in {preload_s:.1f}s")

    # 2. baselines -------------------------------------------------------------------------
    pt_rate = floor = float("nan")
    worker_cpus: list[float] = []
    if "passthrough" in phases:
        pt_rates = []
        for i in range(runs):
            pns = SharedTopics(stack, f"{ns.name}pt{i}", topics_of=ns.name)
            r = asyncio.run(e2e.passthrough(stack.kafka_bootstrap, pns, scale.e2e_events))
            pt_rates.append(r["events_per_s"])
            log(f"pass-through run {i + 1}: {r['events_per_s']:,.0f} events/s")
        pt_rate = median(pt_rates)
        rows.append(("Baseline: raw aiokafka getmany -> produce pass-through",
                     f"{pt_rate:,.0f} events/s{spread(pt_rates)}", "(the limit)",
                     "same messages, batches of up to 5,000, acks=all"))

    if "floor" in phases:
        floor_rates, floor_cpus = [], []
        for i in range(runs):
            r = e2e.faust_floor(stack, SharedTopics(stack, f"{ns.name}fl{i}", topics_of=ns.name),
                                scale.e2e_events, WORKER_ENV)
            floor_rates.append(r["events_per_s"])
            floor_cpus.append(r["cpu_s"] * 1e6 / r["events"])
            log(f"Faust floor run {i + 1}: {r['events_per_s']:,.0f} events/s "
                f"(CPU {r['cpu_s'] * 1e6 / r['events']:.0f} us per event)")
        floor = median(floor_rates)
        floor_cpu = median(floor_cpus)
        rows.append(("Baseline: a Faust worker that only acknowledges (noack_take batches)",
                     f"{floor:,.0f} events/s{spread(floor_rates)}", "(the limit of a worker)",
                     f"same messages and batch settings as the worker; CPU {floor_cpu:.0f} us "
                     "per event"))

    # 3. end to end, one worker (then two) -----------------------------------------------
    scale_rows: dict[int, list[float]] = {}
    trips: list[float] = []
    counts = [n for n, phase in ((1, "e2e"), (2, "scale")) if phase in phases]
    if "redis" in phases and 1 not in counts:
        counts.insert(0, 1)  # the Redis baseline makes as many round trips as one worker
    for workers in counts:
        rates = []
        for i in range(e2e_runs):
            wns = SharedTopics(stack, f"{ns.name}w{workers}r{i}", topics_of=ns.name)
            r = e2e.run_workers(stack, wns, scale.e2e_events, partitions, workers, logs,
                                WORKER_ENV, scale.timeout, profile=profile)
            rates.append(r["events_per_s"])
            log(f"end to end, {workers} worker(s), run {i + 1}: "
                f"{r['events_per_s']:,.0f} events/s (start-up {r['startup_s']:.1f}s, "
                f"{r['events_per_batch']:,.0f} events and "
                f"{r['round_trips_per_batch']:.1f} Redis round trips per batch, "
                f"{r['states_from_memory']:.0%} of states from memory, "
                f"worker CPU {r['cpu_s']:.1f}s = {r['cpu_s'] * 1e6 / scale.e2e_events:.0f} us "
                "per event)")
            if workers == 1:
                trips.append(r["round_trips_per_batch"])
                worker_cpus.append(r["cpu_s"] * 1e6 / scale.e2e_events)
        scale_rows[workers] = rates
    if 1 in scale_rows:
        one = median(scale_rows[1])
        rows.append(("End to end, one worker: first batch stored -> last state committed "
                     "and enriched output published",
                     f"{one:,.0f} events/s{spread(scale_rows[1])}", ">= 10,000 events/s",
                     f"{scale.e2e_events:,} pre-loaded events, {partitions} partitions, "
                     f"CX_BATCH_MAX_EVENTS={WORKER_ENV['CX_BATCH_MAX_EVENTS']}; worker CPU "
                     f"{median(worker_cpus):.0f} us per event"))
        if "passthrough" in phases:
            rows.append(("End to end / pass-through, same run", f"{one / pt_rate:.3f}",
                         ">= 0.25", ""))
    if "floor" in phases and 1 in scale_rows:
        rows.append(("End to end / Faust acknowledge-only floor, same run",
                     f"{median(scale_rows[1]) / floor:.2f}", ">= 0.5", ""))
    quix = float("nan")
    if "peers" in phases:
        peer_rows, peer_rates = _peers(stack, ns, scale, runs, partitions,
                                       median(scale_rows[1]) if 1 in scale_rows
                                       else float("nan"),
                                       median(worker_cpus) if worker_cpus else float("nan"))
        rows.extend(peer_rows)
        quix = peer_rates["quix"]
    if "rebuild" in phases:
        rows.extend(_rebuilds(ns, scale, runs, quix))
    if 2 in scale_rows:
        two = median(scale_rows[2])
        times = f" = {two / median(scale_rows[1]):.2f} x one worker" if 1 in scale_rows else ""
        rows.append(("Scale: end to end, two worker processes",
                     f"{two:,.0f} events/s{spread(scale_rows[2])}{times}",
                     "(shows overhead on 2 cores)",
                     "Kafka, Redis and both workers share the 2 cores"))

    if "redis" in phases:
        # Redis baseline: as many round trips of the same shape as the service makes.
        per_batch = median(trips)
        batches = max(1, scale.e2e_events // int(WORKER_ENV["CX_BATCH_MAX_EVENTS"]))
        rb = e2e.redis_baseline(stack.redis_url,
                                round_trips=max(200, int(per_batch * batches)),
                                commands_per_trip=1000)
        rows.append(("Baseline: raw Redis pipelines (1,000 SET/GET of 700 B each)",
                     f"{rb['round_trips_per_s']:,.0f} round trips/s = "
                     f"{rb['commands_per_s']:,.0f} commands/s", "(the limit)",
                     f"{rb['round_trips']:,} round trips; the service makes "
                     f"{per_batch:.1f} per batch"))

    # 4 + 5. latency at a steady rate, then the lookup under load --------------------------
    if "latency" in phases:
        rows.extend(_latency(stack, scale, logs))

    # 6. memory ----------------------------------------------------------------------------
    if "memory" in phases:
        rows.extend(_memory(stack, base, scale, logs, profile))
    if "heap" in phases:
        rows.extend(_heap(stack, base, scale, logs))
    return rows


def _rebuilds(ns: Namespace, scale: Scale, runs: int, quix: float
              ) -> list[tuple[str, str, str, str]]:
    """`cx-stream rebuild` of the pre-loaded events with one process, then with one process
    per core (each run into a namespace of its own)."""
    cores = os.cpu_count() or 1
    figures: dict[int, tuple[float, float, float]] = {}
    for processes in sorted({1, cores}):
        rates, cpus, servers = [], [], []
        for i in range(runs):
            rns = SharedTopics(ns.stack, f"{ns.name}rb{processes}r{i}", topics_of=ns.name)
            before = _servers_cpu(ns.stack)
            # the rebuild's own batch size (CX_REBUILD_BATCH_MAX_EVENTS), its default unless
            # the bench is given another
            r = e2e.rebuild(rns, processes, {
                k: os.environ[k] for k in ("CX_REBUILD_BATCH_MAX_EVENTS",) if k in os.environ})
            rates.append(r["events_per_s"])
            cpus.append(r["cpu_s"] * 1e6 / r["events"])
            servers.append((_servers_cpu(ns.stack) - before) * 1e6 / r["events"])
            log(f"rebuild, {processes} process(es), run {i + 1}: {r['events_per_s']:,.0f} "
                f"events/s (CPU {cpus[-1]:.0f} us per event, start-up included; Kafka and "
                f"Redis {servers[-1]:.0f} us per event)")
        figures[processes] = (median(rates), median(cpus), median(servers))
    one, one_cpu, one_servers = figures[1]
    rows = [("Rebuild (`cx-stream rebuild --processes 1`), one process",
             f"{one:,.0f} events/s, CPU {one_cpu:.0f} us per event",
             ">= 0.5 x the quix-streams peer",
             f"{scale.e2e_events:,} pre-loaded events; / quix-streams peer, same run: "
             f"{one / quix:.2f}; Kafka and Redis meanwhile {one_servers:.0f} us of CPU per "
             "event")]
    if cores > 1:
        many, many_cpu, many_servers = figures[cores]
        # What the cores allow: all of them, shared by the processes, Kafka and Redis.
        bound = cores / ((one_cpu + one_servers) * 1e-6) / one
        rows.append((f"Rebuild with --processes {cores} (the cores)",
                     f"{many:,.0f} events/s = {many / one:.2f} x one process, CPU "
                     f"{many_cpu:.0f} us per event", ">= 1.7 x one process",
                     f"/ quix-streams peer, same run: {many / quix:.2f}; Kafka and Redis on "
                     f"the same cores took {many_servers:.0f} us per event, so with every "
                     f"core busy at one process's CPU per event the most is {bound:.2f} x "
                     "one process"))
    return rows


def _servers_cpu(stack: Stack) -> float:
    """CPU seconds used so far by the stack's Kafka broker and Redis server."""
    total = 0.0
    for pid_file in (stack.state_dir / "kafka/kafka.pid", stack.state_dir / "redis/redis.pid"):
        pid = pid_file.read_text().strip() if pid_file.exists() else ""
        total += e2e.cpu_seconds(int(pid)) if pid.isdigit() else 0.0
    return total


def _peers(stack: Stack, ns: Namespace, scale: Scale, runs: int, partitions: int,
           worker_rate: float, worker_cpu: float
           ) -> tuple[list[tuple[str, str, str, str]], dict[str, float]]:
    """The core job written with Faust Tables and with quix-streams (bench/peers.py) on the
    same pre-loaded events: their events/s and CPU per event, the worker's ratio to them, and
    whether they mark the same contacts as repeats (of the same contacts) as the worker."""
    rows: list[tuple[str, str, str, str]] = []
    worker_marks = (asyncio.run(e2e.repeat_marks(stack.kafka_bootstrap,
                                                  ns.topic("contact-enriched"), partitions))
                    if worker_rate == worker_rate else {})
    names = {"faust": "Faust app with two Tables (memory://)",
             "quix": "quix-streams 3.28.1, sdf.apply(stateful=True), RocksDB state"}
    peer_rates: dict[str, float] = {}
    for kind in ("faust", "quix"):
        rates, cpus = [], []
        out_topic = ""
        for i in range(runs):
            out_topic = f"{ns.name}-peer-{kind}-{i}"
            asyncio.run(e2e.create_output(stack.kafka_bootstrap, out_topic, partitions))
            r = e2e.peer(stack, SharedTopics(stack, f"{ns.name}{kind}{i}", topics_of=ns.name),
                         kind, scale.e2e_events, partitions, out_topic)
            rates.append(r["events_per_s"])
            cpus.append(r["cpu_s"] * 1e6 / r["events"])
            log(f"{kind} peer run {i + 1}: {r['events_per_s']:,.0f} events/s "
                f"(CPU {cpus[-1]:.0f} us per event, {r['repeats']:,} repeats)")
        rate = peer_rates[kind] = median(rates)
        agreed = ""
        if worker_marks:
            marks = asyncio.run(e2e.repeat_marks(stack.kafka_bootstrap, out_topic, partitions))
            both, repeats, differ = e2e.agreement(worker_marks, marks)
            agreed = (f"; is_repeat/repeat_of as the worker's on {both - differ:,} of "
                      f"{both:,} contacts ({repeats:,} repeats; the worker marked "
                      f"{len(worker_marks):,}, the peer {len(marks):,})")
        rows.append((f"Peer: {names[kind]}, one process",
                     f"{rate:,.0f} events/s{spread(rates)}, CPU {median(cpus):.0f} us per "
                     "event", "(a peer)", f"same events and broker, run after the worker"
                     f"{agreed}"))
    rows.append(("End to end / Faust-Table peer, same run",
                 f"{worker_rate / peer_rates['faust']:.2f} (CPU per event: worker "
                 f"{worker_cpu:.0f} us)", ">= 1.5", ""))
    rows.append(("End to end / quix-streams peer, same run",
                 f"{worker_rate / peer_rates['quix']:.2f}", "(no target)", ""))
    return rows, peer_rates


def _latency(stack: Stack, scale: Scale, logs: Path) -> list[tuple[str, str, str, str]]:
    """Steps 4 and 5: latency at a steady rate, then the lookup under load."""
    rows: list[tuple[str, str, str, str]] = []
    lns = stack.namespace()
    asyncio.run(e2e.create_topics(lns))
    worker = Worker(lns, logs / f"{lns.name}-live.log", **{**WORKER_ENV,
                                                            "CX_BATCH_MAX_WAIT": "20ms"})
    try:
        worker.wait_ready(120)
        asyncio.run(live.latency(stack.kafka_bootstrap, lns, worker.base_url, 200, 3))
        before = _batches(worker)
        cpu, started = e2e.cpu_seconds(worker.proc.pid), time.perf_counter()
        lat = asyncio.run(live.latency(stack.kafka_bootstrap, lns, worker.base_url, 1000,
                                       scale.latency_seconds))
        cpu = e2e.cpu_seconds(worker.proc.pid) - cpu
        cores = cpu / (time.perf_counter() - started)
        batches, events = (a - b for a, b in zip(_batches(worker), before, strict=True))
        e, k = lat["enriched"], lat["lookup"]
        rows.append(("Latency at 1,000 events/s: produce -> enriched readable",
                     f"p50 {e['p50_ms']:.0f} ms, p99 {e['p99_ms']:.0f} ms, "
                     f"max {e['max_ms']:.0f} ms", "p99 <= 250 ms",
                     f"{e['n']:,} events at {lat['rate']:,.0f}/s, {lat['lost']} unmatched; "
                     f"the worker's CPU {cores:.2f} cores, "
                     f"{cpu / max(1, events) * 1e6:,.0f} "
                     f"µs per event, batches of {events / max(1, batches):,.0f} events"))
        rows.append(("Latency at 1,000 events/s: produce -> customer lookup shows it",
                     f"p50 {k['p50_ms']:.0f} ms, p99 {k['p99_ms']:.0f} ms, "
                     f"max {k['max_ms']:.0f} ms", "",
                     f"{k['n']} sampled events, polled every 10 ms (50 ms after 500 ms), "
                     f"at most {live.POLLS_PER_S} polls/s in all"))
        customers = [f"live-cust-{i}" for i in range(20_000)]
        known = [c for c in customers[:5000]
                 if worker.get(f"/api/v1/customers/{c}")[0] == 200][:2000]
        rows.extend(_lookups(worker.base_url, known, scale.lookup_seconds, logs))
        rows.extend(_open_loop(stack, lns, worker, known, scale.lookup_seconds))
    finally:
        worker.stop(30)
    return rows


OPEN_LOOP_RATES = (100, 250, 500, 1000, 1500, 2000, 3000)


def _wait_caught_up(worker: Worker, timeout: float = 180) -> None:
    """Wait until the worker applied every event it was sent (its consumer lag is 0 on every
    partition), for at most `timeout` seconds."""
    started = time.perf_counter()
    while True:
        lag = sum(v for (name, _), v in worker.metrics().items()
                  if name == "cx_consumer_lag_messages")
        waited = time.perf_counter() - started
        if lag == 0:
            log(f"the worker caught up in {waited:.1f} s")
            return
        if waited > timeout:
            log(f"the worker is still {lag:,.0f} events behind after {timeout:.0f} s")
            return
        time.sleep(0.5)


def _batches(worker: Worker) -> tuple[float, float]:
    """The worker's batches applied so far, and their events."""
    metrics = worker.metrics()
    return (metrics.get(("cx_batch_events_count", frozenset()), 0.0),
            metrics.get(("cx_batch_events_sum", frozenset()), 0.0))


def _open_loop(stack: Stack, lns: Namespace, worker: Worker, known: list[str], seconds: float
               ) -> list[tuple[str, str, str, str]]:
    """The lookup as a router asks it: requests at a fixed rate (open loop) while the same
    worker ingests 1,000 call-ended events per second, then with no ingest; p99 and the
    worker's CPU per rate, up to the first rate at which p99 passes 10 ms."""
    paths = [f"/api/v1/customers/{c}" for c in known]
    ids = {p: f'"customer_id":"{c}"'.encode() for p, c in zip(paths, known, strict=True)}

    async def both(rate: float, ingest_rate: float) -> dict[str, Any]:
        ingest = (asyncio.create_task(live.latency(stack.kafka_bootstrap, lns, worker.base_url,
                                                   ingest_rate, seconds, lookups_per_s=1))
                  if ingest_rate else None)
        found = await live.lookup_open_loop(worker.base_url, paths, rate, seconds,
                                            lambda path, body: ids[path] in body)
        found["ingest"] = await ingest if ingest is not None else None
        return found

    def series(ingest_rate: float) -> dict[int, dict[str, Any]]:
        results: dict[int, dict[str, Any]] = {}
        # What an earlier step left the worker to apply would be measured as this step's.
        _wait_caught_up(worker)
        for rate in OPEN_LOOP_RATES:
            cpu, started = e2e.cpu_seconds(worker.proc.pid), time.perf_counter()
            r = results[rate] = asyncio.run(both(rate, ingest_rate))
            r["worker_cores"] = ((e2e.cpu_seconds(worker.proc.pid) - cpu)
                                 / (time.perf_counter() - started))
            log(f"open-loop lookups at {rate:,}/s while ingesting {ingest_rate:,.0f} "
                f"events/s: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, worker CPU "
                f"{r['worker_cores']:.2f} cores, {r['connections']} connections, errors "
                f"{r['errors'] or 'none'}")
            if r["p99_ms"] > 10:
                break
        return results

    def steps(results: dict[int, dict[str, Any]]) -> str:
        return ", ".join(f"{rate:,}/s: {r['p99_ms']:.1f} ms ({r['worker_cores']:.2f} cores)"
                         for rate, r in results.items())

    def passes(results: dict[int, dict[str, Any]]) -> str:
        over = next((rate for rate, r in results.items() if r["p99_ms"] > 10), None)
        return "above " + f"{max(results):,}/s" if over is None else f"{over:,}/s"

    loaded = series(1000)
    at = loaded.get(1000)
    rows = []
    if at is None:
        rows.append(("GET /api/v1/customers/{id}, open loop at 1,000/s while the worker "
                     "ingests 1,000 events/s", "not run: p99 passed 10 ms at a lower rate",
                     "p99 <= 10 ms", ""))
    else:
        rows.append(("GET /api/v1/customers/{id}, open loop at 1,000/s while the worker "
                     "ingests 1,000 events/s",
                     f"p50 {at['p50_ms']:.1f} ms, p99 {at['p99_ms']:.1f} ms, max "
                     f"{at['max_ms']:.0f} ms", "p99 <= 10 ms",
                     f"{at['requests']:,} requests over {seconds:.0f} s, latency from the time "
                     f"each was due; enriched p99 meanwhile "
                     f"{at['ingest']['enriched']['p99_ms']:.0f} ms; errors: "
                     f"{at['errors'] or 'none'}"))
    rows.append(("Open loop: the lookup rate at which p99 passes 10 ms (ingesting 1,000 "
                 "events/s)", passes(loaded), "(report)",
                 f"p99 per rate (the worker's CPU): {steps(loaded)}"))
    # The lookup's own capacity: the same steps with nothing ingested.
    alone = series(0)
    rows.append(("Open loop: the lookup rate at which p99 passes 10 ms (nothing ingested)",
                 passes(alone), "(report)", f"p99 per rate (the worker's CPU): {steps(alone)}"))
    return rows


def _lookups(base_url: str, known: list[str], seconds: float, logs: Path
             ) -> list[tuple[str, str, str, str]]:
    """Step 5: the customer lookup, and the same load on a bare aiohttp server returning a
    fixed small JSON body (the limit of a Python HTTP server and a Python client on these
    cores), at 200 concurrent clients and at 1."""
    rows: list[tuple[str, str, str, str]] = []
    port = free_port()
    with open(logs / "bare-server.log", "ab") as out:
        bare = subprocess.Popen([sys.executable, "-m", "bench.live", "serve", str(port)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        bare_url = f"http://127.0.0.1:{port}"
        _wait_listening("127.0.0.1", port, bare)
        paths = [f"/api/v1/customers/{c}" for c in known]
        ids = {p: f'"customer_id":"{c}"'.encode() for p, c in zip(paths, known, strict=True)}
        bare_paths = [f"/bare/{c}" for c in known]
        for concurrency in (200, 1):
            lk = asyncio.run(live.lookup_load(base_url, paths, concurrency, seconds,
                                              lambda path, body: ids[path] in body))
            bk = asyncio.run(live.lookup_load(bare_url, bare_paths, concurrency, seconds,
                                              lambda path, body: body == live.FIXED_BODY))
            rows.append((f"GET /api/v1/customers/{{id}}, {concurrency} concurrent",
                         f"p50 {lk['p50_ms']:.1f} ms, p99 {lk['p99_ms']:.1f} ms, "
                         f"{lk['requests_per_s']:,.0f} req/s",
                         "p99 <= 10 ms" if concurrency == 200 else "",
                         f"{len(known):,} customers, {lk['requests']:,} requests, errors: "
                         f"{lk['errors'] or 'none'}, client on the same 2 cores"))
            rows.append((f"Baseline: bare aiohttp handler, fixed JSON, {concurrency} concurrent",
                         f"p50 {bk['p50_ms']:.1f} ms, p99 {bk['p99_ms']:.1f} ms, "
                         f"{bk['requests_per_s']:,.0f} req/s", "(the limit)",
                         f"same client; lookup p99 / bare p99 = "
                         f"{lk['p99_ms'] / bk['p99_ms']:.1f}, errors: {bk['errors'] or 'none'}"))
    finally:
        bare.terminate()
        bare.wait(30)
    return rows


def _wait_listening(host: str, port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the bare baseline server exited with {proc.returncode}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the bare baseline server did not start")


def _memory(stack: Stack, base: list[tuple[float, str, dict[str, Any]]], scale: Scale,
            logs: Path, profile: str | None = None) -> list[tuple[str, str, str, str]]:
    client = redis.Redis.from_url(stack.redis_url)
    ns = stack.namespace()
    partitions = asyncio.run(e2e.create_topics(ns))
    log(f"memory: pre-loading {scale.memory_events:,} events")
    before = int(client.info("memory")["used_memory"])
    produced, customers = _preload_many(stack, ns, base, scale.memory_events)
    log(f"memory: {produced:,} events over {len(customers):,} identified customers; "
        "one worker replays them")

    def sample(procs: list[Worker]) -> float:
        return e2e.rss_mb(procs[0].proc.pid)

    r = e2e.run_workers(stack, ns, produced, partitions, 1, logs, WORKER_ENV,
                        scale.timeout * 2, sample, profile=profile)
    rss = [s[2] for s in r["samples"]]
    final = r.get("final_sample", rss[-1] if rss else 0.0)
    marks = [rss[len(rss) * q // 4] if rss else final for q in (1, 2, 3)]
    after = int(client.info("memory")["used_memory"])
    families = _key_families(client, ns.name)
    states, state_bytes, ttl_share = families["state"]
    client.close()
    per_state = state_bytes / max(1, states)
    others = ", ".join(f"{name} {n:,} keys {b / 1e6:,.1f} MB" for name, (n, b, _) in
                       families.items() if name != "state")
    return [
        ("Memory: worker RSS over the replay (at 25% / 50% / 75% of the time / at the end; "
         "peak)",
         " / ".join(f"{m:.0f}" for m in [*marks, final]) + f" MB; {max([*rss, final]):.0f} MB",
         "<= 300 MB, flat", f"{produced:,} events, {len(customers):,} identified customers, "
         f"{r['events_per_s']:,.0f} events/s"),
        ("Memory: Redis bytes per tracked state (customer, or contact of an unidentified "
         "caller)", f"{per_state:,.0f} B", "<= 2 KB",
         f"{states:,} states held {state_bytes / 1e6:,.1f} MB (MEMORY USAGE); all of Redis "
         f"grew {(after - before) / 1e6:,.1f} MB = {(after - before) / max(1, states):,.0f} B "
         f"per state, with {others}"),
        ("Idle state expires", f"{ttl_share:.0%} of state keys have a TTL", "all",
         "and a customer's records go once the watermark passes their window "
         "(a bounded history stays until the TTL)"),
    ]


def _preload_many(stack: Stack, ns: Namespace, base: list[tuple[float, str, dict[str, Any]]],
                  total: int) -> tuple[int, set[str]]:
    """Pre-load `total` events of the workload, a chunk at a time; (events, customers)."""
    chunk = 250_000
    produced = 0
    source = workload.events(total, base)
    customers: set[str] = set()
    while produced < total:
        part = []
        for kind, event in source:
            part.append((kind, workload.key_of(event), orjson.dumps(event)))
            if event.get("customer_id") is not None:
                customers.add(event["customer_id"])
            if len(part) >= chunk:
                break
        if not part:
            break
        asyncio.run(e2e.preload(stack.kafka_bootstrap, ns, part))
        produced += len(part)
    return produced, customers


def _heap(stack: Stack, base: list[tuple[float, str, dict[str, Any]]], scale: Scale,
          logs: Path) -> list[tuple[str, str, str, str]]:
    """A heap census (tracemalloc, bench/heap_worker.py) of one worker replaying the memory
    phase's events, taken when 60% of them were applied."""
    ns = stack.namespace()
    partitions = asyncio.run(e2e.create_topics(ns))
    # A traced worker is several times slower: at most 200,000 events (BENCH_HEAP_EVENTS)
    wanted = int(os.environ.get("BENCH_HEAP_EVENTS", min(scale.memory_events, 200_000)))
    total, _ = _preload_many(stack, ns, base, wanted)
    out = logs / f"{ns.name}-heap.json"
    client = redis.Redis.from_url(stack.redis_url)
    with open(logs / f"{ns.name}-heap-worker.log", "ab") as worker_log:
        proc = subprocess.Popen([sys.executable, "-m", "bench.heap_worker"],
                                env=ns.env(**WORKER_ENV, BENCH_HEAP_OUT=str(out)),
                                stdout=worker_log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + scale.timeout * 2
        while e2e.progress(client, ns, partitions)[0] < 0.6 * total:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the traced worker stopped or fell behind")
            time.sleep(0.2)
        Path(f"{out}.please").touch()
        while Path(f"{out}.please").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the traced worker gave no census")
            time.sleep(0.2)
        census = orjson.loads(out.read_bytes())
    except RuntimeError as exc:  # the rest of the table is still worth printing
        log(f"heap census: {exc}")
        return [("Memory: heap census (tracemalloc) of a worker replaying", f"not taken: {exc}",
                 "(where it goes)", f"{total:,} events")]
    finally:
        proc.terminate()
        proc.wait(60)
        client.close()
    mb = 1024 * 1024
    groups = ", ".join(f"{label} {size / mb:.1f}" for label, size in census["groups"][:9])
    top = "; ".join(f"{where.split('/')[-1]} {size / mb:.1f} MB"
                    for where, size, _ in census["top_lines"][:6])
    log(f"heap census: {census}")
    return [("Memory: heap census (tracemalloc) of a worker replaying, at 60% of "
             f"{total:,} events",
             f"RSS {census['rss'] / mb:.0f} MB, of it traced Python objects "
             f"{census['traced'] / mb:.0f} MB (peak {census['traced_peak'] / mb:.0f} MB)",
             "(where it goes)", f"MB by owner: {groups}. Largest lines: {top}")]


def _key_families(client: redis.Redis, prefix: str) -> dict[str, tuple[int, float, float]]:
    """Per kind of key: (keys, bytes by MEMORY USAGE extrapolated from up to 20,000 of them,
    share of the sampled keys with a time-to-live)."""
    kinds = {"state": ":s:", "contact view": ":contact:", "hour counters": ":h:"}
    found: dict[str, list[bytes]] = {k: [] for k in [*kinds, "other"]}
    for key in client.scan_iter(match=f"{prefix}:*", count=10_000):
        text = key.decode()
        kind = next((k for k, mark in kinds.items() if mark in text), "other")
        found[kind].append(key)
    out: dict[str, tuple[int, float, float]] = {}
    for kind, keys in found.items():
        sample = keys[:: max(1, len(keys) // 20_000)]
        pipe = client.pipeline(transaction=False)
        for key in sample:
            pipe.memory_usage(key, samples=0)
            pipe.pttl(key)
        replies = pipe.execute() if sample else []
        used = sum(int(v or 0) for v in replies[0::2])
        with_ttl = sum(1 for v in replies[1::2] if int(v) > 0)
        scale = len(keys) / len(sample) if sample else 0
        out[kind] = (len(keys), used * scale, with_ttl / len(sample) if sample else 0.0)
    return out


def _table(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| measure | result (median) | target | notes |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _write_doc(table: str, command: str, started: datetime, env_machine: str,
               elapsed: float) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    block = (f"{BEGIN}\nMeasured {started:%Y-%m-%d %H:%M} UTC with `{command}` "
             f"({elapsed / 60:.1f} min) on {env_machine}.\n\n{table}\n{END}")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    path.write_text(head + block + tail)


if __name__ == "__main__":
    main()
