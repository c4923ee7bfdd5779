"""Handles on the real servers and worker processes the tests drive."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_run(count: int, bus_offset: int = 0) -> int:
    """The first of `count` consecutive free ports (and, with `bus_offset`, the ports that far
    above them), below the range the system hands out for outgoing connections."""
    for _ in range(200):
        first = random.randrange(20000, 32768 - bus_offset - count)
        wanted = [first + i for i in range(count)]
        if bus_offset:
            wanted += [port + bus_offset for port in wanted]
        if all(_bindable(port) for port in wanted):
            return first
    raise RuntimeError(f"no run of {count} free ports found")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Stack:
    kafka_bootstrap: str
    redis_url: str
    redis_port: int
    script: str
    env: dict[str, str]
    state_dir: Path

    def namespace(self) -> Namespace:
        """Topics, consumer group and Redis key prefix of one test's own."""
        return Namespace(self, f"t{uuid.uuid4().hex[:10]}")


@dataclass
class Namespace:
    stack: Stack
    name: str
    http_port: int = field(default_factory=free_port)

    def topic(self, kind: str) -> str:
        return f"{self.name}-{kind}"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CX_KAFKA_BOOTSTRAP=self.stack.kafka_bootstrap,
            CX_REDIS_URL=self.stack.redis_url,
            CX_GROUP_ID=self.name,
            CX_KEY_PREFIX=self.name,
            CX_TOPIC_CALL_ENDED=self.topic("call-ended"),
            CX_TOPIC_TRANSFER=self.topic("transfer"),
            CX_TOPIC_SURVEY_ANSWERED=self.topic("survey-answered"),
            CX_TOPIC_DEAD_LETTER=self.topic("dead-letter"),
            CX_TOPIC_CONTACT_ENRICHED=self.topic("contact-enriched"),
            CX_TOPIC_CUSTOMER_ALERTS=self.topic("customer-alerts"),
            CX_HTTP_PORT=str(self.http_port),
            CX_COMMIT_INTERVAL="200ms",
            CX_KAFKA_SESSION_TIMEOUT="6s",
            CX_METRICS_REFRESH="1s",  # a refresh reads 2 x 168 hours x 6 partitions
            CX_API_RATE_LIMIT="0",  # tests and benchmarks read the API in bulk from one address
        )
        env.update(extra)
        return env

    def settings_env(self) -> dict[str, str]:
        return {k: v for k, v in self.env().items() if k.startswith("CX_")}


class Worker:
    """A `cx-stream worker` subprocess."""

    def __init__(self, ns: Namespace, log_path: Path, **extra_env: str) -> None:
        self.ns = ns
        self.port = ns.http_port
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "worker"],
            env=ns.env(**extra_env), stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.logs()}")

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        _, body = self.get("/metrics")
        out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def logs(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]


def wait_until(check: Any, timeout: float = 60, interval: float = 0.25, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")


async def produce(
    bootstrap: str, records: Iterable[tuple[str, bytes | None, bytes | None]], **options: Any
) -> list[Any]:
    """Publish and return each record's metadata (topic, partition, offset), in order.
    `options` go to the producer (e.g. larger requests for oversized events)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **{"acks": "all", "linger_ms": 5,
                                                                **options})
    await producer.start()
    try:
        futures = [await producer.send(t, value=v, key=k) for t, k, v in records]
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()


async def assign_topic(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Assign every partition of `topic` to a started consumer (waiting for its metadata)."""
    parts = consumer.partitions_for_topic(topic)
    while not parts:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    return tps


async def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 60) -> list[Any]:
    """Read a topic from the start until `expected` records arrived (or the time ran out)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        await assign_topic(consumer, topic)
        await consumer.seek_to_beginning()
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                records.extend(msgs)
        return records
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str, topics: Iterable[str],
                            partitions: int) -> dict[tuple[str, int], int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        out = {}
        for topic in topics:
            for p in range(partitions):
                out[(topic, p)] = await consumer.committed(TopicPartition(topic, p)) or 0
        return out
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, topics: Iterable[str],
                      partitions: int) -> dict[tuple[str, int], int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): off for tp, off in ends.items()}
    finally:
        await consumer.stop()


def event_records(
    ns: Namespace, cases: Iterable[Mapping[str, Any]]
) -> list[tuple[str, bytes | None, bytes]]:
    from service.adapters.kafka_publish import key_of

    out = []
    for case in cases:
        event = case["event"]
        key = key_of(event) if isinstance(event, dict) else b"k"
        out.append((ns.topic(case["kind"]), key, orjson.dumps(event)))
    return out


@dataclass
class LocalRedis:
    """A Redis of its own (e.g. CX_LOCAL_REDIS=sentinel: primary, replica, sentinel), started
    by the project's stack script in `state_dir` on three consecutive free ports."""

    mode: str
    state_dir: Path
    port: int = 0
    url: str = ""

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "CX_REDIS_URL"}
        env.update(CX_STACK_DIR=str(self.state_dir), CX_LOCAL_REDIS=self.mode,
                   CX_REDIS_PORT=str(self.port))
        return env

    def start(self) -> LocalRedis:
        script = str(ROOT / "deploy/local/stack.sh")
        failures = []
        for _ in range(3):  # a free port can be taken before the server binds it
            self.port = free_port_run(3)
            started = subprocess.run([script, "start", "redis"], env=self._env(),
                                     capture_output=True, text=True)
            if started.returncode == 0:
                printed = subprocess.run([script, "env"], env=self._env(), capture_output=True,
                                         text=True, check=True).stdout
                self.url = dict(line.split("=", 1) for line in printed.split())["CX_REDIS_URL"]
                return self
            failures.append(started.stderr)
            self.stop()
        raise RuntimeError("could not start the local Redis:\n" + "\n---\n".join(failures))

    def stop(self) -> None:
        subprocess.run([str(ROOT / "deploy/local/stack.sh"), "stop", "redis"], env=self._env(),
                       capture_output=True)

    def cli(self, port: int, *args: str) -> str:
        done = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                              text=True, timeout=30, check=True)
        return done.stdout
