"""`cx-stream simulate`: live traffic from the traffic model into Kafka (or a JSONL file)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from typing import IO

import orjson

from service.adapters.kafka_publish import EventPublisher
from service.config import Settings
from service.domain.durations import parse_duration
from service.domain.validation import parse_rfc3339
from service.tools.traffic import TrafficModel


def default_start(now: float, speed: float, duration: float | None, to_file: bool,
                  history: float) -> float:
    """Where event time starts when --start is not given: so that the traffic never runs
    ahead of the present. A file covers `duration * speed` of event time ending now; live
    traffic faster than real time starts in the past (ending now after `duration`, or
    `history` back when it runs on) and catches up with the present."""
    if to_file:
        return now - (duration or 0.0) * speed
    if speed <= 1:
        return now
    if duration is not None:
        return now - duration * (speed - 1)
    return now - history


def run_simulation(settings: Settings, args: argparse.Namespace) -> int:
    now = time.time()
    duration = parse_duration(args.duration) if args.duration else None
    if args.rate <= 0 or args.speed <= 0 or args.customers <= 0:
        print("cx-stream simulate: --rate, --speed and --customers must be above 0",
              file=sys.stderr)
        return 2
    if args.start:
        parsed = parse_rfc3339(args.start)
        if parsed is None:
            print(f"cx-stream simulate: --start is not RFC 3339: {args.start!r}", file=sys.stderr)
            return 2
        start = parsed.timestamp()
        if start > now and not args.out:
            print("cx-stream simulate: --start is in the future: the worker dead-letters events "
                  "more than CX_MAX_CLOCK_SKEW ahead of their Kafka timestamp (from_future)",
                  file=sys.stderr)
            return 2
    else:
        start = default_start(now, args.speed, duration, bool(args.out), settings.repeat_window)
    model = TrafficModel(
        start=start,
        contacts_per_second=args.rate / args.speed,
        customers=args.customers,
        seed=args.seed,
        duplicate_share=args.duplicates,
        malformed_share=args.malformed,
        degraded_queues=tuple(args.degrade_queue),
    )
    topics = {
        "call-ended": settings.topic_call_ended,
        "transfer": settings.topic_transfer,
        "survey-answered": settings.topic_survey_answered,
    }
    if args.out:
        if duration is None:
            print("cx-stream simulate: --out needs --duration", file=sys.stderr)
            return 2
        with open(args.out, "wb") as out:
            count = _write_jsonl(model, start + duration * args.speed, out)
        print(f"wrote {count:,} messages to {args.out}")
        return 0
    return asyncio.run(_publish_live(model, settings, topics, start, args.speed, duration,
                                     catch_up=args.catch_up))


def _write_jsonl(model: TrafficModel, until: float, out: IO[bytes]) -> int:
    count = 0
    for msg in model.advance(until):
        try:
            body: dict[str, object] = {"topic": msg.kind, "event": orjson.loads(msg.value)}
        except orjson.JSONDecodeError:
            body = {"topic": msg.kind, "raw": msg.value.decode(), "key": (msg.key or b"").decode()}
        out.write(orjson.dumps(body) + b"\n")
        count += 1
    return count


def simulated_clock(start: float, elapsed: float, speed: float, now: float) -> float:
    """Event time reached after `elapsed` wall-clock seconds, held at the present `now`."""
    return min(start + elapsed * speed, max(now, start))


# With --catch-up, the history is published this much event time at a time, as fast as Kafka
# takes it (a step's messages are generated, then sent, then the next step's).
CATCH_UP_STEP = 3600.0


def catch_up_clock(previous: float, now: float) -> float:
    """The next step of event time while catching up: an hour on, never past the present."""
    return min(previous + CATCH_UP_STEP, max(now, previous))


async def _publish_live(model: TrafficModel, settings: Settings, topics: dict[str, str],
                        start: float, speed: float, duration: float | None,
                        catch_up: bool = False) -> int:
    publisher = EventPublisher(settings)
    await publisher.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    wall_start = time.monotonic()
    sent = 0
    last_report = wall_start
    caught_up = False
    clock = start
    try:
        while not stop.is_set():
            elapsed = time.monotonic() - wall_start
            if duration is not None and elapsed >= duration:
                break
            # Never ahead of the present: records are stamped with the wall clock, and an event
            # time past it would be dead-lettered (from_future).
            present = time.time()
            if catch_up:
                clock = catch_up_clock(clock, present)
                reached = clock >= present
            else:
                clock = simulated_clock(start, elapsed, speed, present)
                reached = clock < start + elapsed * speed
            if reached and not caught_up:
                caught_up = True
                print(f"simulate: caught up with the present ({sent:,} events published); "
                      "real time from now on", file=sys.stderr, flush=True)
            for msg in model.advance(clock):
                await publisher.send_raw(topics[msg.kind], msg.key, msg.value)
                sent += 1
            now = time.monotonic()
            if now - last_report >= 10:
                last_report = now
                shown = time.strftime("%Y-%m-%d %H:%M", time.gmtime(clock))
                print(f"simulate: {sent:,} events published (event time {shown} UTC)",
                      file=sys.stderr, flush=True)
            if catch_up and not caught_up:
                await asyncio.sleep(0)  # the next hour of history at once
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.05)
    finally:
        await publisher.close()
    print(f"simulate: published {sent:,} events", file=sys.stderr)
    return 0
