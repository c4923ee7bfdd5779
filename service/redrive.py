"""`cx-stream redrive`: send dead-lettered events back to their input topic, once fixed.

Reads the dead-letter topic up to where it ended when the command started (so it never reads
what it causes), selects records by reason, time or offsets, and re-publishes each one's
original key and value bytes to its source topic, with a `cx-redriven` header naming the dead
letter. The worker applies them as any other event; one still invalid is dead-lettered again,
marked `redriven`, and such a dead letter is not redriven again unless asked
(`--include-redriven`): nothing loops. A dead letter whose copy was cut
(CX_DEAD_LETTER_MAX_COPY) or left out cannot be redriven and is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import time
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from service.adapters.connections import kafka_options
from service.config import Settings

REDRIVE_HEADER = "cx-redriven"
SEND = "send"


class NoDeadLetterTopic(Exception):
    """CX_TOPIC_DEAD_LETTER names no topic the brokers know."""


@dataclass(frozen=True)
class Selection:
    """Which dead letters to send back. Offsets are those of the dead-letter topic."""

    reasons: frozenset[str] = frozenset()  # empty: any reason
    since: datetime | None = None  # on `dead_lettered_at`, inclusive
    until: datetime | None = None  # exclusive
    partition: int | None = None
    from_offset: int | None = None
    to_offset: int | None = None  # inclusive
    include_redriven: bool = False
    limit: int | None = None


@dataclass
class Report:
    read: int = 0
    sent: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # why -> how many

    def line(self, dry_run: bool) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        verb = "would send" if dry_run else "sent"
        return (f"redrive: {verb} {self.sent} of {self.read} dead letters read"
                + (f"; skipped: {skipped}" if skipped else ""))


def choose(record: Any, selection: Selection, input_topics: Collection[str]) -> str:
    """SEND, or why this dead letter is not sent back (a short phrase for the report)."""
    if not isinstance(record, Mapping):
        return "unreadable"
    if selection.reasons and record.get("reason") not in selection.reasons:
        return "other reason"
    if selection.since is not None or selection.until is not None:
        try:
            at = datetime.fromisoformat(str(record.get("dead_lettered_at")))
        except ValueError:
            return "unreadable"
        if selection.since is not None and at < selection.since:
            return "outside the time range"
        if selection.until is not None and at >= selection.until:
            return "outside the time range"
    if record.get("topic") not in input_topics or record.get("partition") is None:
        return "not from an input topic"
    if record.get("redriven") and not selection.include_redriven:
        return "redriven before (use --include-redriven)"
    if record.get("truncated"):
        return "copy cut (cannot be redriven)"
    return SEND


def original(record: Mapping[str, Any]) -> tuple[bytes | None, bytes | None]:
    """The original key and value bytes a (not cut) dead letter carries."""
    key, value = record.get("key_base64"), record.get("value_base64")
    return (None if key is None else base64.b64decode(key),
            None if value is None else base64.b64decode(value))


async def redrive(settings: Settings, selection: Selection, *, dry_run: bool,
                  progress: TextIO | None = None, progress_every: float = 5.0) -> Report:
    """Send the selected dead letters back; the report says what was sent and skipped."""
    topic = settings.topic_dead_letter
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                enable_auto_commit=False, **kafka_options(settings))
    producer = None if dry_run else AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True,
        **kafka_options(settings))
    report = Report()
    await consumer.start()
    try:
        if producer is not None:
            await producer.start()
        partitions = consumer.partitions_for_topic(topic)
        for _ in range(50):  # metadata of a topic not asked for before: up to 10 s
            if partitions is not None:
                break
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                await asyncio.sleep(0.2)
        if partitions is None:
            raise NoDeadLetterTopic(f"the dead-letter topic {topic!r} was not found")
        if selection.partition is not None:
            partitions = {p for p in partitions if p == selection.partition}
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return report
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)  # what exists now: read no further
        begins = await consumer.beginning_offsets(tps)
        stop: dict[TopicPartition, int] = {}
        total = 0
        for tp in tps:
            start = max(begins[tp], selection.from_offset or 0)
            end = ends[tp]
            if selection.to_offset is not None:
                end = min(end, selection.to_offset + 1)
            if start < end:
                consumer.seek(tp, start)
                stop[tp] = end
                total += end - start
        pending: list[asyncio.Future[Any]] = []
        shown = time.monotonic()
        while stop and (selection.limit is None or report.sent < selection.limit):
            batch = await consumer.getmany(*stop, timeout_ms=1000, max_records=500)
            if not batch:  # nothing came: partitions whose remaining offsets hold no record
                for tp in [tp for tp in stop if await consumer.position(tp) >= stop[tp]]:
                    del stop[tp]
            for tp, messages in batch.items():
                for message in messages:
                    if tp not in stop or message.offset >= stop[tp]:
                        stop.pop(tp, None)
                        break
                    if selection.limit is not None and report.sent >= selection.limit:
                        break
                    report.read += 1
                    await _one(message, selection, settings, producer, report, pending)
                if tp in stop and await consumer.position(tp) >= stop[tp]:
                    del stop[tp]
            if progress is not None and time.monotonic() - shown >= progress_every:
                shown = time.monotonic()
                progress.write(f"redrive: read {report.read} of {total}, "
                               f"{'would send' if dry_run else 'sent'} {report.sent}\n")
                progress.flush()
        if pending:
            await asyncio.gather(*pending)
        return report
    finally:
        await consumer.stop()
        if producer is not None:
            await producer.stop()


async def _one(message: Any, selection: Selection, settings: Settings,
               producer: AIOKafkaProducer | None, report: Report,
               pending: list[asyncio.Future[Any]]) -> None:
    try:
        record = orjson.loads(message.value) if message.value is not None else None
    except orjson.JSONDecodeError:
        record = None
    why = choose(record, selection, settings.input_topics)
    if why != SEND:
        report.skipped[why] += 1
        return
    assert isinstance(record, Mapping)
    key, value = original(record)
    report.sent += 1
    if producer is None:
        return
    mark = f"{message.topic}:{message.partition}:{message.offset}".encode()
    pending.append(await producer.send(record["topic"], value=value, key=key,
                                       headers=[(REDRIVE_HEADER, mark)]))
    if len(pending) >= 1000:
        await asyncio.gather(*pending)
        pending.clear()


def _time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"expected an RFC 3339 time with an offset: {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", action="append", default=[], metavar="REASON",
                        help="only dead letters of this reason (repeatable; default: any)")
    parser.add_argument("--since", type=_time, default=None, metavar="TIME",
                        help="only those dead-lettered at or after this RFC 3339 time")
    parser.add_argument("--until", type=_time, default=None, metavar="TIME",
                        help="only those dead-lettered before this RFC 3339 time")
    parser.add_argument("--partition", type=int, default=None,
                        help="only this partition of the dead-letter topic")
    parser.add_argument("--from-offset", type=int, default=None, metavar="N",
                        help="start at this offset of the dead-letter topic (each partition)")
    parser.add_argument("--to-offset", type=int, default=None, metavar="N",
                        help="stop after this offset of the dead-letter topic (inclusive)")
    parser.add_argument("--include-redriven", action="store_true",
                        help="also send dead letters of events that were redriven before")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="send at most this many")
    parser.add_argument("--dry-run", action="store_true",
                        help="count what would be sent; send nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run_redrive(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    selection = Selection(
        reasons=frozenset(args.reason), since=args.since, until=args.until,
        partition=args.partition, from_offset=args.from_offset, to_offset=args.to_offset,
        include_redriven=args.include_redriven, limit=args.limit)
    try:
        report = asyncio.run(redrive(settings, selection, dry_run=args.dry_run,
                                     progress=None if args.quiet else sys.stderr))
    except NoDeadLetterTopic as exc:
        print(f"cx-stream: {exc}", file=sys.stderr)
        return 1
    out.write(report.line(args.dry_run) + "\n")
    return 0
