"""End-to-end measurements on the real stack: pre-loading, the raw pass-through baseline, the
Redis baseline, and worker processes replaying pre-loaded input."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from service.adapters.kafka_admin import ensure_layout
from service.config import Settings, load_settings
from tests.support.stack import ROOT, Namespace, Stack, Worker, free_port

KINDS = ("call-ended", "transfer", "survey-answered")


def settings_of(ns: Namespace) -> Settings:
    return load_settings(ns.settings_env())


async def create_topics(ns: Namespace) -> int:
    """The service's topics, and the pass-through's output topic."""
    settings = settings_of(ns)
    _, partitions = await ensure_layout(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(ns.topic("passthrough-out"), partitions, 1)])
    finally:
        await admin.close()
    return partitions


async def preload(bootstrap: str, ns: Namespace, messages: list[tuple[str, bytes, bytes]]
                  ) -> float:
    """Publish the messages to the namespace's input topics; seconds it took."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                                max_batch_size=512 * 1024, compression_type=None)
    await producer.start()
    started = time.perf_counter()
    try:
        topics = {k: ns.topic(k) for k in KINDS}
        pending = []
        for kind, key, value in messages:
            pending.append(await producer.send(topics[kind], value=value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def passthrough(bootstrap: str, ns: Namespace, total: int) -> dict[str, Any]:
    """Raw aiokafka: getmany from the input topics, produce every value unchanged to an output
    topic, wait for the acks of each batch; no decoding, no state."""
    consumer = AIOKafkaConsumer(
        *[ns.topic(k) for k in KINDS], bootstrap_servers=bootstrap,
        group_id=f"{ns.name}-passthrough", auto_offset_reset="earliest",
        enable_auto_commit=False, max_poll_records=5000,
        fetch_max_bytes=50 * 1024 * 1024, max_partition_fetch_bytes=4 * 1024 * 1024)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_batch_size=512 * 1024)
    await consumer.start()
    await producer.start()
    out_topic = ns.topic("passthrough-out")
    seen = 0
    first: float | None = None
    try:
        while seen < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if not batch:
                continue
            if first is None:
                first = time.perf_counter()
            futures = []
            for msgs in batch.values():
                for m in msgs:
                    futures.append(await producer.send(out_topic, value=m.value, key=m.key))
                seen += len(msgs)
            await asyncio.gather(*futures)
            await consumer.commit()
        elapsed = time.perf_counter() - (first or time.perf_counter())
    finally:
        await producer.stop()
        await consumer.stop()
    return {"events": seen, "seconds": elapsed, "events_per_s": seen / elapsed}


def redis_baseline(url: str, round_trips: int, commands_per_trip: int) -> dict[str, Any]:
    """Raw redis-py pipelines: `round_trips` pipelines of `commands_per_trip` SET/GET of
    state-sized values (the service's batch shape), round trips per second."""
    client = redis.Redis.from_url(url)
    value = b"x" * 700
    started = time.perf_counter()
    for i in range(round_trips):
        pipe = client.pipeline(transaction=False)
        for j in range(commands_per_trip):
            if i % 2:
                pipe.get(f"bench:k:{j}")
            else:
                pipe.set(f"bench:k:{j}", value)
        pipe.execute()
    elapsed = time.perf_counter() - started
    client.delete(*[f"bench:k:{j}" for j in range(commands_per_trip)])
    client.close()
    return {"round_trips": round_trips, "seconds": elapsed,
            "round_trips_per_s": round_trips / elapsed,
            "commands_per_s": round_trips * commands_per_trip / elapsed}


async def end_offsets(bootstrap: str, ns: Namespace, partitions: int) -> dict[tuple[str, int], int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(ns.topic(k), p) for k in KINDS for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): off for tp, off in ends.items()}
    finally:
        await consumer.stop()


def progress(client: redis.Redis, ns: Namespace, partitions: int) -> tuple[int, int]:
    """(input messages applied or skipped, outbox items not yet published), from Redis."""
    pipe = client.pipeline(transaction=False)
    for p in range(partitions):
        pipe.hgetall(f"{ns.name}:{{p{p}}}:clock")
        pipe.llen(f"{ns.name}:{{p{p}}}:outbox")
    replies = pipe.execute()
    done = 0
    for clock in replies[0::2]:
        for key, value in clock.items():
            if key.startswith(b"o:"):
                done += int(value) + 1
    return done, sum(replies[1::2])


def run_workers(stack: Stack, ns: Namespace, total: int, partitions: int, workers: int,
                logs: Path, env: dict[str, str], timeout: float,
                sample: Any = None, profile: str | None = None) -> dict[str, Any]:
    """Start `workers` processes on pre-loaded topics; events/s from the first batch stored
    to the last one stored with its outputs published. `profile`: a directory to write a
    py-spy flame graph of each worker into (recorded from the first batch stored)."""
    client = redis.Redis.from_url(stack.redis_url)
    procs = []
    for i in range(workers):
        wns = dataclasses.replace(ns, http_port=free_port()) if i else ns
        procs.append(Worker(wns, logs / f"{ns.name}-worker-{i}.log", **env))
    spies: list[subprocess.Popen[bytes]] = []
    launched = time.perf_counter()
    first: float | None = None
    first_done = 0
    cpu_at_first = 0.0
    finished: float | None = None
    samples: list[tuple[float, int, int]] = []
    try:
        deadline = launched + timeout
        last_sample = 0.0
        while time.perf_counter() < deadline:
            done, outbox = progress(client, ns, partitions)
            now = time.perf_counter()
            if first is None and done > 0:
                first, first_done = now, done
                cpu_at_first = sum(cpu_seconds(w.proc.pid) for w in procs)
                if profile:
                    spies = [_py_spy(w.proc.pid, Path(profile) / f"{ns.name}-worker-{i}")
                             for i, w in enumerate(procs)]
            if done >= total and outbox == 0:
                finished = now
                break
            if sample is not None and now - last_sample >= 2.0:
                last_sample = now
                samples.append((now - launched, done, sample(procs)))
            for w in procs:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"worker exited: {w.logs()}")
            time.sleep(0.05)
        cpu = sum(cpu_seconds(w.proc.pid) for w in procs) - cpu_at_first
        if finished is None or first is None:
            raise RuntimeError(f"workers did not finish {total} events in {timeout}s "
                               f"(done {progress(client, ns, partitions)})")
        result: dict[str, Any] = {
            "events": total, "workers": workers,
            "seconds": finished - first,
            "events_per_s": (total - first_done) / (finished - first),
            "startup_s": first - launched,
            "samples": samples,
            "cpu_s": cpu,  # the workers' CPU time from the first batch stored to the end
        }
        if sample is not None:
            result["final_sample"] = sample(procs)
        trips = sum(w.metric("cx_redis_round_trip_seconds_count") for w in procs)
        batches = sum(w.metric("cx_batch_events_count") for w in procs)
        events = sum(w.metric("cx_batch_events_sum") for w in procs)
        result["round_trips_per_batch"] = trips / batches if batches else float("nan")
        result["events_per_batch"] = events / batches if batches else float("nan")
        memory = sum(w.metric("cx_state_reads_total", source="memory") for w in procs)
        read = sum(w.metric("cx_state_reads_total", source="redis") for w in procs)
        result["states_from_memory"] = memory / (memory + read) if memory + read else 0.0
        return result
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
        for spy in spies:
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()
        for w in procs:
            w.stop(30)
        client.close()


def _py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [str(spy), "record", "--pid", str(pid), "--rate", "100", "--format", "raw",
         "--output", f"{out}.txt", "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def faust_floor(stack: Stack, ns: Namespace, total: int, env: dict[str, str]) -> dict[str, Any]:
    """bench.faust_floor on the namespace's input topics: events/s of Faust alone."""
    from service.domain.durations import parse_duration

    run_env = {**os.environ, "BENCH_FLOOR_BOOTSTRAP": stack.kafka_bootstrap,
               "BENCH_FLOOR_TOPICS": ",".join(ns.topic(k) for k in KINDS),
               "BENCH_FLOOR_EVENTS": str(total), "BENCH_FLOOR_GROUP": f"{ns.name}-floor",
               "BENCH_FLOOR_BATCH": env["CX_BATCH_MAX_EVENTS"],
               "BENCH_FLOOR_WITHIN": str(parse_duration(env["CX_BATCH_MAX_WAIT"]))}
    done = subprocess.run([sys.executable, "-m", "bench.faust_floor"], env=run_env,
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    # Faust's worker sends stdout to its log (stderr): find the line there.
    found = re.search(r'\{"events".*?\}', done.stdout + done.stderr)
    if found is None:
        raise RuntimeError(f"Faust floor failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
    result: dict[str, Any] = orjson.loads(found.group(0))
    result["events_per_s"] = result["events"] / result["seconds"]
    return result


def peer(stack: Stack, ns: Namespace, kind: str, total: int, partitions: int,
         out_topic: str) -> dict[str, Any]:
    """bench.peers `kind` (faust or quix) on the namespace's input topics, publishing its
    enriched records to `out_topic`: events/s and CPU of a peer implementation of the job."""
    if kind == "faust":  # the Tables' changelogs, co-partitioned with the input
        for table in ("contacts", "hours"):
            asyncio.run(create_output(stack.kafka_bootstrap, f"{ns.name}-{kind}-{table}-changelog",
                                      partitions, compacted=True))
    run_env = {**os.environ, "BENCH_PEER_BOOTSTRAP": stack.kafka_bootstrap,
               "BENCH_PEER_TOPICS": ",".join(ns.topic(k) for k in KINDS),
               "BENCH_PEER_EVENTS": str(total), "BENCH_PEER_GROUP": f"{ns.name}-{kind}",
               "BENCH_PEER_OUT": out_topic, "BENCH_PEER_PARTITIONS": str(partitions)}
    done = subprocess.run([sys.executable, "-m", "bench.peers", kind], env=run_env,
                          capture_output=True, text=True, timeout=3600, cwd=ROOT)
    found = re.search(r'\{"events".*?\}', done.stdout + done.stderr)
    if found is None:
        raise RuntimeError(f"{kind} peer failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
    result: dict[str, Any] = orjson.loads(found.group(0))
    result["events_per_s"] = result["events"] / result["seconds"]
    return result


async def repeat_marks(bootstrap: str, topic: str, partitions: int) -> dict[str, str | None]:
    """contact_id -> repeat_of (None: not a repeat) of the last record of each contact on an
    enriched-output topic, read from its start to its end offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    marks: dict[str, str | None] = {}
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        left = {tp for tp in tps if ends[tp] > 0}
        while left:
            batch = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            for tp, msgs in batch.items():
                for m in msgs:
                    view = orjson.loads(m.value)
                    marks[view["contact_id"]] = view.get("repeat_of") if view.get(
                        "is_repeat") else None
                if msgs and msgs[-1].offset + 1 >= ends[tp]:
                    left.discard(tp)
    finally:
        await consumer.stop()
    return marks


def agreement(worker: dict[str, str | None], other: dict[str, str | None]) -> tuple[int, int,
                                                                                     int]:
    """(contacts both marked, of which repeats, contacts where they differ)."""
    both = worker.keys() & other.keys()
    differ = sum(1 for c in both if worker[c] != other[c])
    return len(both), sum(1 for c in both if worker[c] is not None), differ


async def create_output(bootstrap: str, topic: str, partitions: int,
                        compacted: bool = False) -> None:
    """An output topic for a peer (it may exist already from an earlier run)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        configs = {"cleanup.policy": "compact"} if compacted else {}
        await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=configs)])
    except Exception as exc:  # TopicAlreadyExistsError
        if "exist" not in repr(exc).lower():
            raise
    finally:
        await admin.close()


def rebuild(ns: Namespace, processes: int, env: dict[str, str]) -> dict[str, Any]:
    """`cx-stream rebuild --no-switch --processes N` of the namespace's pre-loaded input into
    policy version 2: messages/s as it reports them (from its first fetch to the end offsets
    taken at its start) and the CPU time of it and its processes (start-up included)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [sys.executable, "-m", "service", "rebuild", "--no-switch", "--processes",
         str(processes), "--progress-every", "3600"],
        env=ns.env(**env, CX_POLICY_VERSION="2"), capture_output=True, text=True,
        timeout=1800, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = re.findall(r"v2: ([\d,]+) of ([\d,]+) messages \([\d.]+%\), ([\d,]+)/s",
                       done.stdout)
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"rebuild failed ({done.returncode}): {done.stdout[-3000:]} "
                           f"{done.stderr[-2000:]}")
    replayed, _, rate = lines[-1]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"events": int(replayed.replace(",", "")),
            "events_per_s": float(rate.replace(",", "")), "cpu_s": cpu}
