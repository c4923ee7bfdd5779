"""The fault scenarios of docs/reliability.md, each sized by its caller.

`tests/e2e/test_reliability.py` runs short forms in `make test`; `tests/chaos/test_full.py`
runs every scenario at full size with `make chaos`. Each scenario drives a stream from
`tests.chaos.stream` through real workers, Kafka and Redis while injecting its faults, then
has the comparer check every output against the oracle: 0 lost, 0 double-applied, 0 wrong.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import threading
import time
from pathlib import Path

from tests.chaos.harness import (
    Measured,
    Scenario,
    incr_aof,
    kill_redis,
    rss_kib,
    start_stack,
    stop_kafka,
)
from tests.chaos.stream import (
    DAY,
    HOSTILE_KINDS,
    T0,
    Message,
    Stream,
    generate,
    hostile_message,
    invalid_message,
    key_of,
    too_late_tail,
)
from tests.support.stack import Stack, Worker

EXIT_REDIS_RESTARTED = 75


def _fractions(rng: random.Random, n: int) -> list[float]:
    return sorted(rng.uniform(0.08, 0.85) for _ in range(n))


def _valid_count(stream: Stream) -> int:
    return sum(1 for m in stream.main if m.event is not None)


def _wait_fraction(sc: Scenario, total: int, fraction: float, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sc.applied() >= total * fraction:
            return
        for w in sc.live_workers():
            if w.proc.poll() is not None:
                raise AssertionError(w.logs())
        time.sleep(0.1)
    raise AssertionError(f"{fraction:.0%} of {total} not applied after {timeout}s")


def invalid_counted(workers: list[Worker]) -> dict[str, float]:
    """cx_events_invalid_total by reason, summed over the workers (and topics)."""
    out: dict[str, float] = {}
    for w in workers:
        for (name, labels), value in w.metrics().items():
            if name == "cx_events_invalid_total":
                reason = dict(labels)["reason"]
                out[reason] = out.get(reason, 0) + value
    return out


def _finish(sc: Scenario, stream: Stream, late: int = 30, timeout: float = 600,
            counted: bool = False, redis_lost_writes: bool = False) -> Measured:
    """Wait for the stream, send the too-late tail, wait, compare, stop the workers. With
    `counted` (a run without restarts), the workers' invalid-event counters must match too."""
    sc.wait_caught_up(timeout)
    if len(stream.main) < 25_000:  # a short form: check a sample of the customers' curves
        sc.customers = 800
    stream.tail = too_late_tail(stream, late)
    sc.produce(stream.tail)
    sc.wait_caught_up(120)
    try:
        report = sc.verify()
        if counted:
            want: dict[str, float] = {}
            for m in stream.messages:
                if m.reject:
                    want[m.reject] = want.get(m.reject, 0) + 1
            got = {r: n for r, n in invalid_counted(sc.live_workers()).items() if n}
            assert got == want, (got, want)
    finally:
        codes = sc.stop_all()
    assert report.clean, str(report)
    if not redis_lost_writes:  # only then may a contact's version numbers start again
        assert report.version_regressions == 0, str(report)
    assert all(code == 0 for code in codes), codes
    return sc.measured


def kill_9(stack: Stack, tmp: Path, *, events: int, kills: int, seed: int = 1,
           days: int = 28) -> Measured:
    """Scenario 1: SIGKILL the worker at random points of the stream, restart it each time."""
    with Scenario(stack, tmp, "kill-9") as sc:
        stream = generate(seed, events, days=days)
        sc.produce(stream.main)
        total = _valid_count(stream)
        worker = sc.start_worker()
        rng = random.Random(seed)
        for fraction in _fractions(rng, kills):
            _wait_fraction(sc, total, fraction)
            time.sleep(rng.uniform(0, 0.5))  # not always right after a batch was committed
            worker.kill()
            killed = time.monotonic()
            sc.measured.faults.append(f"kill -9 at {fraction:.0%}")
            baseline = sc.applied()
            worker = sc.start_worker()
            sc.measured.recoveries.append(sc.wait_progress(killed, baseline))
        return _finish(sc, stream)


def rebalances(stack: Stack, tmp: Path, *, events: int, joins: int, seed: int = 2,
               days: int = 21) -> Measured:
    """Scenario 2: two workers in one group; a third joins and leaves, `joins` times."""
    with Scenario(stack, tmp, "rebalance") as sc:
        stream = generate(seed, events, days=days)
        sc.produce(stream.main)
        total = _valid_count(stream)
        sc.start_worker()
        sc.start_worker()
        rng = random.Random(seed)
        for fraction in _fractions(rng, joins):
            _wait_fraction(sc, total, fraction)
            third = sc.start_worker()
            started = time.monotonic()
            sc.measured.faults.append(f"third worker joins at {fraction:.0%}")
            third.wait_ready(120)
            time.sleep(rng.uniform(1, 4))
            assert third.stop() == 0, third.logs()
            sc.measured.faults.append("third worker leaves")
            sc.measured.recoveries.append(sc.wait_progress(started, sc.applied()))
        return _finish(sc, stream)


def _supervise(sc: Scenario, worker: Worker, codes: list[int]) -> Worker:
    """Restart a worker that exited on its own (what a supervisor does)."""
    if worker.proc.poll() is not None:
        codes.append(worker.stop())
        return sc.start_worker()
    return worker


def kafka_restart(stack: Stack, tmp: Path, *, events: int, outage: float = 8.0,
                  seed: int = 3, days: int = 21) -> Measured:
    """Scenario 3: the broker is stopped mid-stream and started again. The worker must
    recover on its own (it is not restarted unless it exits)."""
    with Scenario(stack, tmp, "kafka-restart") as sc:
        stream = generate(seed, events, days=days)
        sc.produce(stream.main)
        total = _valid_count(stream)
        worker = sc.start_worker()
        codes: list[int] = []
        try:
            _wait_fraction(sc, total, 0.3)
            stopped = time.monotonic()
            stop_kafka(stack)
            sc.measured.faults.append(f"broker stopped for {outage:.0f}s at 30%")
            time.sleep(outage)
            start_stack(stack)
            baseline = sc.applied()
            deadline = time.monotonic() + 180
            while sc.applied() <= baseline and time.monotonic() < deadline:
                worker = _supervise(sc, worker, codes)
                time.sleep(0.5)
            sc.measured.recoveries.append(time.monotonic() - stopped)
        finally:
            start_stack(stack)
        assert not codes, f"the worker exited {codes} instead of recovering by itself"
        return _finish(sc, stream)


class _AofWatch:
    """Samples the size of Redis' append-only file, to cut it back as a power cut would."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.sizes: dict[float, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            path = incr_aof(self.stack)
            if path is not None:
                with contextlib.suppress(OSError):
                    self.sizes[time.monotonic()] = path.stat().st_size
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def redis_loss(stack: Stack, tmp: Path, *, events: int, crashes: int, seed: int = 4,
               days: int = 21, lose_seconds: float = 1.0) -> Measured:
    """Scenario 4: Redis is killed mid-stream and loses the last second of writes it had
    acknowledged (its AOF cut back as a power cut would), then restarts from its AOF."""
    with Scenario(stack, tmp, "redis-loss") as sc:
        stream = generate(seed, events, days=days)
        sc.produce(stream.main)
        total = _valid_count(stream)
        worker = sc.start_worker()
        rng = random.Random(seed)
        codes: list[int] = []
        forgotten: list[int] = []
        watch = _AofWatch(stack)
        try:
            for fraction in _fractions(rng, crashes):
                _wait_fraction(sc, total, fraction)
                applied_before = sc.applied()
                kill_redis(stack, lose_seconds, watch.sizes)
                crashed = time.monotonic()
                sc.measured.faults.append(f"Redis killed at {fraction:.0%}, last "
                                          f"{lose_seconds:.0f}s of writes lost")
                time.sleep(1)  # a commit of a batch acknowledged before the kill may be in flight
                committed = _committed(sc)
                time.sleep(2)
                # while Redis is down nothing more is applied, so no offset moves
                assert _committed(sc) == committed
                start_stack(stack)
                baseline = sc.applied()
                forgotten.append(applied_before - baseline)
                print(f"applied before {applied_before}, after restart {baseline}")
                sc.measured.faults.append(f"Redis came back without {applied_before - baseline} "
                                          "applied events")
                deadline = time.monotonic() + 180
                while sc.applied() <= baseline and time.monotonic() < deadline:
                    worker = _supervise(sc, worker, codes)
                    time.sleep(0.2)
                sc.measured.recoveries.append(time.monotonic() - crashed)
        finally:
            watch.stop()
            start_stack(stack)
        # the fault bit: Redis forgot events it had acknowledged, whose offsets Kafka may hold
        assert max(forgotten) > 0, forgotten
        assert codes, "the worker did not stop when Redis restarted"
        assert all(code == EXIT_REDIS_RESTARTED for code in codes), codes
        return _finish(sc, stream, redis_lost_writes=True)


def _committed(sc: Scenario) -> dict[tuple[str, int], int]:
    import asyncio

    from tests.support.stack import committed_offsets

    topics = [sc.ns.topic(k) for k in ("call-ended", "transfer", "survey-answered")]
    return asyncio.run(committed_offsets(sc.stack.kafka_bootstrap, sc.ns.name, topics, 6))


def redis_slow(stack: Stack, tmp: Path, *, events: int, pauses: list[float], seed: int = 5,
               days: int = 21) -> Measured:
    """Scenario 5: Redis stops answering for a while (DEBUG SLEEP), several times; one pause
    is longer than the worker's socket timeout (10 s), so a commit times out on the client
    while Redis still runs it afterwards."""
    with Scenario(stack, tmp, "redis-slow") as sc:
        stream = generate(seed, events, days=days)
        sc.produce(stream.main)
        total = _valid_count(stream)
        sc.start_worker()
        rng = random.Random(seed)
        for fraction, pause in zip(_fractions(rng, len(pauses)), pauses, strict=True):
            _wait_fraction(sc, total, fraction)
            subprocess.run(["redis-cli", "-p", str(stack.redis_port), "DEBUG", "SLEEP",
                            str(pause)], check=True, capture_output=True)
            answered = time.monotonic()  # the pause is over
            sc.measured.faults.append(f"Redis paused {pause:.0f}s at {fraction:.0%}")
            sc.measured.recoveries.append(sc.wait_progress(answered, sc.applied()))
        return _finish(sc, stream)


def hostile_data(stack: Stack, tmp: Path, *, events: int, share: float = 0.01,
                 seed: int = 9, days: int = 28) -> Measured:
    """Scenario 9: hostile messages (HOSTILE_KINDS: deep nesting, impossible times, event
    times from the future, keys that are not the customer) spread through the stream, `share`
    of it: each dead-lettered with its reason, every valid event applied exactly, and the
    worker never restarts."""
    with Scenario(stack, tmp, "hostile-data") as sc:
        stream = generate(seed, events, days=days)
        rng = random.Random(seed)
        valid = [m for m in stream.main if m.event is not None]
        hostile: list[Message] = []
        for i in range(int(len(stream.main) * share)):
            reason = HOSTILE_KINDS[i % len(HOSTILE_KINDS)]
            template = rng.choice(valid)
            assert template.event is not None
            event = dict(template.event, event_id=f"hostile-{i:06d}")
            if "started_at" in event:
                event["contact_id"] = f"hostile-ct-{i:06d}"  # a contact that is never sent
            kind, key, value, expected = hostile_message(rng, reason, template.kind, event,
                                                         key_of(event))
            hostile.append(Message(kind, key, value, None, expected,
                                   emit=rng.choice(valid).emit))
        stream.main = sorted(stream.main + hostile, key=lambda m: m.emit)
        worker = sc.start_worker()
        sc.produce(stream.main)
        sc.measured.faults.append(f"{len(hostile)} hostile messages "
                                  f"({', '.join(HOSTILE_KINDS)}) among {len(stream.main)}")
        sc.wait_caught_up(1200)
        assert worker.proc.poll() is None, worker.logs()  # never stopped: no restart
        return _finish(sc, stream, counted=True, timeout=1200)


def poison_flood(stack: Stack, tmp: Path, *, events: int, flood: int, oversized: int,
                 seed: int = 6, days: int = 14) -> Measured:
    """Scenario 6: `flood` invalid events in a row on one partition and `oversized` events
    over the size limit, in the middle of the stream: all dead-lettered, the partition keeps
    moving, the worker's memory stays flat."""
    with Scenario(stack, tmp, "poison-flood") as sc:
        stream = generate(seed, events, days=days)
        half = len(stream.main) // 2
        worker = sc.start_worker()
        sc.produce(stream.main[:half])
        sc.wait_caught_up(300)
        rss_before = rss_kib(worker.proc.pid)
        rng = random.Random(seed)
        template = next(m for m in stream.main if m.kind == "call-ended" and m.event is not None)
        assert template.event is not None
        bad: list[Message] = []
        kinds = ("not_json", "not_object", "missing_field", "wrong_type", "invalid_value",
                 "bad_timestamp", "started_after_occurred")
        for i in range(flood):
            reason = kinds[i % len(kinds)]
            kind, value = invalid_message(rng, reason, "call-ended",
                                          dict(template.event, event_id=f"flood-{i}"))
            bad.append(Message(kind, template.key, value, None, reason))
        for i in range(oversized):
            event = dict(template.event, event_id=f"huge-{i}",
                         notes="x" * rng.randrange(70_000, 900_000))
            kind, value = invalid_message(rng, "too_large", "call-ended", event)
            bad.append(Message(kind, template.key, value, None, "too_large"))
        flooded = time.monotonic()
        sc.produce(bad)
        sc.produce(stream.main[half:])
        sc.measured.faults.append(f"{flood} invalid events in a row, {oversized} over the limit")
        sc.wait_caught_up(600)
        sc.measured.recoveries.append(time.monotonic() - flooded)
        rss_after = rss_kib(worker.proc.pid)
        sc.measured.faults.append(f"worker RSS {rss_before // 1024} MiB -> {rss_after // 1024} MiB")
        assert rss_after - rss_before < 64 * 1024, (rss_before, rss_after)
        stream.main = stream.main + bad
        return _finish(sc, stream, counted=True)


def resend_hour(stack: Stack, tmp: Path, *, events: int, seed: int = 7, days: int = 21
                ) -> Measured:
    """Scenario 7: a producer sends a whole hour of events again (same ids, new offsets)."""
    with Scenario(stack, tmp, "resend-hour") as sc:
        stream = generate(seed, events, days=days)
        sc.produce(stream.main)
        sc.start_worker()
        sc.wait_caught_up(600)
        newest = max(m.event["occurred_at"] for m in stream.main if m.event is not None)
        from tests.chaos.oracle import seconds

        floor = seconds(newest) - 6 * DAY  # within the allowed lateness of every watermark
        end = T0 + days * DAY - 6 * 3600  # an hour near the end of the busy period
        hour = [m for m in stream.main
                if end - 3600 <= m.emit < end
                and (m.event is None or seconds(m.event["occurred_at"]) >= floor)]
        assert len(hour) > events / (days * 24) / 2, len(hour)  # a real hour of traffic
        started = time.monotonic()
        sc.produce(hour)
        sc.measured.faults.append(f"{len(hour)} events of one hour sent again")
        sc.wait_caught_up(300)
        sc.measured.recoveries.append(time.monotonic() - started)
        stream.main = stream.main + hour
        return _finish(sc, stream)


def too_late(stack: Stack, tmp: Path, *, events: int, late: int, seed: int = 8,
             days: int = 14) -> Measured:
    """Scenario 8: events beyond the allowed lateness: dead-lettered as too late, counted,
    nothing else changed (the comparer checks every output and every watermark)."""
    with Scenario(stack, tmp, "too-late") as sc:
        stream = generate(seed, events, days=days)
        sc.produce(stream.main)
        worker = sc.start_worker()
        worker.wait_ready()
        sc.measured.faults.append(f"{late} events older than watermark - lateness")
        return _finish(sc, stream, late=late, counted=True)
