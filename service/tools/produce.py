"""`cx-stream produce FILE.jsonl`: publish events from a file.

Each line is `{"topic": KIND, "event": {...}}` (KIND is `call-ended`, `transfer` or
`survey-answered`, or a topic name), or `{"topic": KIND, "raw": "...", "key": "..."}` to publish
bytes as they are (for testing the dead-letter path).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator

import orjson

from service.adapters.kafka_publish import EventPublisher, key_of
from service.config import Settings
from service.tools.progress import Progress


def _topic_map(settings: Settings) -> dict[str, str]:
    topics = {
        "call-ended": settings.topic_call_ended,
        "transfer": settings.topic_transfer,
        "survey-answered": settings.topic_survey_answered,
    }
    topics.update({t: t for t in settings.input_topics})
    return topics


def read_lines(path: str, topics: dict[str, str]) -> Iterator[tuple[str, bytes | None, bytes]]:
    """(topic, key, value) per line; a line that is not of the file format raises ValueError."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
                topic = topics[record["topic"]]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise ValueError(
                    f'{path}:{number}: expected {{"topic": ..., "event": ...}}'
                ) from None
            if "raw" in record:
                key = record.get("key")
                yield topic, key.encode() if key else None, str(record["raw"]).encode()
            else:
                event = record.get("event")
                if not isinstance(event, dict):
                    raise ValueError(f"{path}:{number}: \"event\" must be an object")
                yield topic, key_of(event), orjson.dumps(event)


def count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def run_produce(settings: Settings, args: argparse.Namespace) -> int:
    try:
        sent, seconds = asyncio.run(
            publish_file(settings, args.file, progress=not args.quiet)
        )
    except (OSError, ValueError) as exc:
        print(f"cx-stream produce: {exc}", file=sys.stderr)
        return 1
    print(f"published {sent:,} events in {seconds:.1f}s")
    return 0


async def publish_file(settings: Settings, path: str, *, progress: bool) -> tuple[int, float]:
    topics = _topic_map(settings)
    bar = Progress(count_lines(path), "produce", enabled=progress)
    publisher = EventPublisher(settings)
    await publisher.start()
    try:
        for topic, key, value in read_lines(path, topics):
            await publisher.send_raw(topic, key, value)
            bar.advance()
    finally:
        await publisher.close()
    return bar.done, bar.finish()
