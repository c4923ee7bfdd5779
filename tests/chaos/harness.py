"""Drives one scenario: topics, producing the stream, workers, faults, waiting, comparing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from service.adapters.kafka_admin import ensure_topics
from service.adapters.redis_state import RedisState, connect
from service.config import load_settings
from tests.chaos.compare import Report, Sent, compare
from tests.chaos.oracle import expected
from tests.chaos.stream import Message, Stream
from tests.support.stack import (
    Namespace,
    Stack,
    Worker,
    committed_offsets,
    end_offsets,
    free_port,
    produce,
)

PARTITIONS = 6
KINDS = ("call-ended", "transfer", "survey-answered")


@dataclass
class Measured:
    """One row of docs/reliability.md."""

    events: int = 0
    faults: list[str] = field(default_factory=list)
    recoveries: list[float] = field(default_factory=list)  # seconds, fault to progress
    seconds: float = 0.0
    report: Report | None = None

    def row(self, name: str) -> str:
        r = self.report
        rec = max(self.recoveries) if self.recoveries else 0.0
        return (f"{name}: events={self.events} faults={len(self.faults)} "
                f"lost={r.lost if r else '?'} double_applied={r.double_applied if r else '?'} "
                f"wrong={r.wrong if r else '?'} max_recovery={rec:.1f}s "
                f"recoveries={[round(x, 1) for x in self.recoveries]} "
                f"total={self.seconds:.0f}s checked={dict(r.checked) if r else {}} "
                f"version_regressions={r.version_regressions if r else '?'} "
                f"faults: {'; '.join(self.faults)}")


class Scenario:
    def __init__(self, stack: Stack, tmp_path: Path, name: str) -> None:
        self.stack = stack
        self.tmp = tmp_path
        self.name = name
        self.ns: Namespace = stack.namespace()
        self.sent: Sent = {}
        self.messages: list[Message] = []
        self.workers: list[Worker] = []
        self.measured = Measured()
        self.customers: int | None = None
        self.started = time.monotonic()
        asyncio.run(ensure_topics(load_settings(self.ns.settings_env())))

    def __enter__(self) -> Scenario:
        return self

    def __exit__(self, *exc: object) -> None:
        """Whatever happened, no worker outlives the scenario."""
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(10)

    # -- workers -------------------------------------------------------------------------------

    def start_worker(self, **env: str) -> Worker:
        port = free_port()
        self.ns.http_port = port
        # The business gauges are not under test here; refreshing them every second (as the
        # other end-to-end tests do) would take most of the worker's time on a long stream.
        env.setdefault("CX_METRICS_REFRESH", "120s")
        worker = Worker(self.ns, self.tmp / f"worker-{len(self.workers)}.log", **env)
        self.workers.append(worker)
        return worker

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers if w.proc.poll() is None]

    def stop_all(self) -> list[int]:
        return [w.stop() for w in self.workers if not w._log.closed]

    # -- input ---------------------------------------------------------------------------------

    def produce(self, messages: Iterable[Message]) -> None:
        began = time.monotonic()
        batch = list(messages)
        metas = asyncio.run(produce(
            self.stack.kafka_bootstrap, [(self.ns.topic(m.kind), m.key, m.value) for m in batch],
            linger_ms=20, enable_idempotence=True, max_request_size=4 << 20,
            max_batch_size=1 << 20))
        for m, meta in zip(batch, metas, strict=True):
            self.sent[(meta.topic, meta.partition, meta.offset)] = m.reject
        self.messages.extend(batch)
        self.measured.events += len(batch)
        print(f"{self.name}: produced {len(batch)} in {time.monotonic() - began:.1f}s")

    # -- progress ------------------------------------------------------------------------------

    def applied(self) -> int:
        """Events applied so far (all partitions' clocks)."""
        async def read() -> int:
            state = RedisState(connect(self.stack.redis_url), self.ns.name, state_ttl=60,
                               counter_ttl=60, contact_ttl=60)
            try:
                clocks = await state.read_clocks(PARTITIONS)
                return sum(n for c in clocks.values() for n in c.applied.values())
            finally:
                await state.client.aclose()
        try:
            return asyncio.run(read())
        except Exception:
            return -1

    def caught_up(self) -> bool:
        topics = [self.ns.topic(k) for k in KINDS]
        try:
            ends = asyncio.run(end_offsets(self.stack.kafka_bootstrap, topics, PARTITIONS))
            done = asyncio.run(committed_offsets(self.stack.kafka_bootstrap, self.ns.name,
                                                 topics, PARTITIONS))
        except Exception:
            return False
        if any(done[tp] < end for tp, end in ends.items()):
            return False
        return self.outbox_empty()

    def outbox_empty(self) -> bool:
        async def read() -> bool:
            state = RedisState(connect(self.stack.redis_url), self.ns.name, state_ttl=60,
                               counter_ttl=60, contact_ttl=60)
            try:
                lengths = [await state.client.llen(state.key(p, "outbox"))
                           for p in range(PARTITIONS)]
                return not any(lengths)
            finally:
                await state.client.aclose()
        try:
            return asyncio.run(read())
        except Exception:
            return False

    def wait_caught_up(self, timeout: float) -> None:
        began = time.monotonic()
        deadline = began + timeout
        while time.monotonic() < deadline:
            for w in self.workers:
                if not w._log.closed and w.proc.poll() not in (None, 0):
                    raise AssertionError(f"worker exited {w.proc.returncode}:\n{w.logs()}")
            if self.caught_up():
                print(f"{self.name}: caught up after {time.monotonic() - began:.1f}s")
                return
            time.sleep(1)
        raise AssertionError(f"not caught up after {timeout}s; applied {self.applied()}")

    def wait_progress(self, since: float, baseline: int, timeout: float = 120) -> float:
        """Seconds from `since` until the applied count moves past `baseline`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.applied() > baseline or self.caught_up():
                return time.monotonic() - since
            time.sleep(0.2)
        raise AssertionError(f"no progress {timeout}s after the fault:\n"
                             + "\n".join(w.logs()[-3000:] for w in self.live_workers()))

    # -- verdict -------------------------------------------------------------------------------

    def verify(self, api_worker: Worker | None = None) -> Report:
        """Compare every output with the oracle (perception: every customer, or a sample of
        CX_CHAOS_CUSTOMERS of them; the short forms in `make test` use a sample)."""
        worker = api_worker or self.live_workers()[0]
        began = time.monotonic()
        truth = expected(self.messages, PARTITIONS)
        report = asyncio.run(compare(
            truth, self.sent, redis_url=self.stack.redis_url, prefix=self.ns.name,
            bootstrap=self.stack.kafka_bootstrap,
            dead_letter_topic=self.ns.topic("dead-letter"), api=worker.base_url,
            partitions=PARTITIONS, customers=self.customers,
            enriched_topic=self.ns.topic("contact-enriched")))
        self.measured.report = report
        self.measured.seconds = time.monotonic() - self.started
        print(f"{self.name}: compared in {time.monotonic() - began:.1f}s: {report}")
        _record(self.tmp, self.name, self.measured)
        return report

    def run_stream(self, stream: Stream) -> None:
        self.produce(stream.main)


def _record(tmp: Path, name: str, m: Measured) -> None:
    line = m.row(name)
    print(line)
    out = os.environ.get("CX_CHAOS_RESULTS")
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


# -- the servers of the test stack ---------------------------------------------------------------


def _pid(stack: Stack, name: str) -> int:
    return int((stack.state_dir / name / f"{name}.pid").read_text().strip())


def kill_redis(stack: Stack, lose_seconds: float = 0.0, aof_sizes: dict[float, int] | None
               = None) -> None:
    """SIGKILL Redis. With `lose_seconds`, cut its append-only file back to its size that long
    before the kill: what a power cut loses with `appendfsync everysec` (writes Redis had
    acknowledged but not yet written to disk)."""
    pid = _pid(stack, "redis")
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)
    if lose_seconds and aof_sizes:
        older = [t for t in list(aof_sizes) if t <= killed - lose_seconds]
        path = incr_aof(stack)
        if older and path is not None and path.stat().st_size > aof_sizes[max(older)]:
            print(f"Redis AOF cut from {path.stat().st_size} to {aof_sizes[max(older)]} bytes")
            os.truncate(path, aof_sizes[max(older)])


def incr_aof(stack: Stack) -> Path | None:
    files = sorted((stack.state_dir / "redis" / "appendonlydir").glob("*.incr.aof"))
    return files[-1] if files else None


def stop_kafka(stack: Stack, hard: bool = False) -> None:
    pid = _pid(stack, "kafka")
    os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
    _wait_gone(pid, 60)


def start_stack(stack: Stack) -> None:
    """Start whatever of the test stack is not running (deploy/local/stack.sh start)."""
    done = subprocess.run([stack.script, "start"], env=stack.env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise AssertionError(f"stack did not start: {done.stderr}")


def _wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still alive")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
