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


def run_simulation(settings: Settings, args: argparse.Namespace) -> int:
    start = time.time()
    if args.start:
        parsed = parse_rfc3339(args.start)
        if parsed is None:
            print(f"cx-stream simulate: --start is not RFC 3339: {args.start!r}", file=sys.stderr)
            return 2
        start = parsed.timestamp()
    duration = parse_duration(args.duration) if args.duration else None
    if args.rate <= 0 or args.speed <= 0 or args.customers <= 0:
        print("cx-stream simulate: --rate, --speed and --customers must be above 0",
              file=sys.stderr)
        return 2
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
    return asyncio.run(_publish_live(model, settings, topics, start, args.speed, duration))


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


async def _publish_live(model: TrafficModel, settings: Settings, topics: dict[str, str],
                        start: float, speed: float, duration: float | None) -> int:
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
    try:
        while not stop.is_set():
            elapsed = time.monotonic() - wall_start
            if duration is not None and elapsed >= duration:
                break
            for msg in model.advance(start + elapsed * speed):
                await publisher.send_raw(topics[msg.kind], msg.key, msg.value)
                sent += 1
            now = time.monotonic()
            if now - last_report >= 10:
                last_report = now
                shown = time.strftime("%Y-%m-%d %H:%M", time.gmtime(start + elapsed * speed))
                print(f"simulate: {sent:,} events published (event time {shown} UTC)",
                      file=sys.stderr, flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.05)
    finally:
        await publisher.close()
    print(f"simulate: published {sent:,} events", file=sys.stderr)
    return 0
