"""`cx-stream map`: a platform's raw records (a topic, or a JSONL export) to contract events.

A process of its own, beside the workers (docs/sources.md says why). From a topic it reads a
batch, maps every record (service/mapping), publishes the events to the input topics and a
dead letter for every record (or rule) that cannot be mapped, waits for Kafka's
acknowledgement of all of them, and only then commits the batch's offsets: at least once.
After a crash the batch is mapped again; its events keep their ids (derived from the record),
so the worker drops the copies as duplicates.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import orjson
from prometheus_client import CollectorRegistry, Counter, start_http_server

from service.adapters.connections import kafka_options, kafka_startup_failure
from service.adapters.failures import kafka_transient
from service.config import ConfigError, Settings
from service.mapping.engine import MapLimits, RecordResult, map_record
from service.mapping.spec import MappingError, MappingSpec, load_mapping
from service.service_layer.dead_letters import (
    InputMessage,
    dead_letter_key,
    dead_letter_record,
)

log = logging.getLogger("cx-stream.map")
SHIPPED = ("amazon_connect", "genesys_cloud")
MIN_SALT = 16

Output = tuple[str, bytes | None, bytes]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mapping", default=None, metavar="FILE",
                        help="mapping file, or a shipped one: amazon_connect, genesys_cloud "
                             "(default CX_MAP_MAPPING)")
    parser.add_argument("--topic", default=None,
                        help="topic of the raw records (default CX_MAP_TOPIC)")
    parser.add_argument("--from-file", default=None, metavar="FILE",
                        help="map a JSONL export (one record a line) instead of a topic")
    parser.add_argument("--to-stdout", action="store_true",
                        help="with --from-file: print the events as `cx-stream produce` reads "
                             "them, and dead letters on standard error, instead of publishing")


def read_mapping(name_or_path: str, params: dict[str, str]) -> MappingSpec:
    """A shipped mapping by name, or a mapping file; MappingError says what is wrong."""
    if name_or_path in SHIPPED:
        text = (resources.files("service.mapping") / "platforms" / f"{name_or_path}.yaml"
                ).read_text()
        return load_mapping(text, f"{name_or_path}.yaml", params)
    path = Path(name_or_path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"{name_or_path}: cannot read the mapping file ({exc})") from None
    return load_mapping(text, path.name, params)


def hash_salt(settings: Settings) -> bytes:
    if settings.map_hash_salt_file:
        try:
            with open(settings.map_hash_salt_file) as f:
                return f.readline().strip().encode()
        except OSError as exc:
            raise ConfigError(f"CX_MAP_HASH_SALT_FILE: cannot read it ({exc})") from None
    return settings.map_hash_salt.encode()


class MapMetrics:
    """Per source: records read, events published by kind, dead letters by reason."""

    def __init__(self, source: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.source = source
        self.records = Counter("cx_map_records", "Raw platform records read by cx-stream map.",
                               ["source"], registry=r)
        self.events = Counter("cx_map_events", "Contract events mapped from raw records and "
                              "published, by kind.", ["source", "kind"], registry=r)
        self.dead = Counter("cx_map_dead_letters", "Raw records (or one rule's event of one) "
                            "that could not be mapped, sent to the dead-letter topic, by "
                            "reason.", ["source", "reason"], registry=r)
        self.skipped = Counter("cx_map_records_skipped", "Raw records no rule of the mapping "
                               "takes (e.g. Amazon Connect tasks): nothing published.",
                               ["source"], registry=r)
        self.records.labels(source)
        self.skipped.labels(source)
        for kind in ("call-ended", "transfer", "survey-answered"):
            self.events.labels(source, kind)


@dataclass
class Mapper:
    """Turns raw messages into the records to publish: events and dead letters."""

    spec: MappingSpec
    settings: Settings
    salt: bytes
    metrics: MapMetrics

    @property
    def limits(self) -> MapLimits:
        return MapLimits(self.settings.map_max_record_bytes, self.settings.max_event_depth)

    def topic_of(self, kind: str) -> str:
        s = self.settings
        return {"call-ended": s.topic_call_ended, "transfer": s.topic_transfer,
                "survey-answered": s.topic_survey_answered}[kind]

    def map(self, msg: InputMessage) -> tuple[RecordResult, list[Output]]:
        result = map_record(self.spec, msg.value, salt=self.salt, limits=self.limits)
        m, source = self.metrics, self.spec.source
        m.records.labels(source).inc()
        outputs: list[Output] = []
        for event in result.events:
            outputs.append((self.topic_of(event.kind), event.key, orjson.dumps(event.event)))
            m.events.labels(source, event.kind).inc()
        now = datetime.now(UTC)
        for failure in result.failures:
            record = dead_letter_record(msg, failure.reason.value, failure.message, now,
                                        self.settings.dead_letter_max_copy)
            record["event_id"] = failure.event_id
            outputs.append((self.settings.topic_dead_letter,
                            dead_letter_key(msg, self.settings.dead_letter_max_copy),
                            orjson.dumps(record)))
            m.dead.labels(source, failure.reason.value).inc()
        if not result.events and not result.failures:
            m.skipped.labels(source).inc()
        return result, outputs


def run_map(settings: Settings, args: argparse.Namespace) -> int:
    name = args.mapping or settings.map_mapping
    if not name:
        print("cx-stream map: no mapping: give --mapping or CX_MAP_MAPPING (a file, or "
              f"{' / '.join(SHIPPED)})", file=sys.stderr)
        return 2
    try:
        spec = read_mapping(name, settings.map_params)
    except MappingError as exc:
        print(f"cx-stream map: {exc}", file=sys.stderr)
        return 2
    salt = hash_salt(settings)
    if spec.uses_hash and len(salt) < MIN_SALT:
        print(f"cx-stream map: CX_MAP_HASH_SALT: the mapping {spec.origin} hashes values (a "
              f"caller's number); set a secret salt of at least {MIN_SALT} characters",
              file=sys.stderr)
        return 2
    mapper = Mapper(spec, settings, salt, MapMetrics(spec.source))
    if args.from_file:
        return _from_file(mapper, args.from_file, args.to_stdout)
    if args.to_stdout:
        print("cx-stream map: --to-stdout goes with --from-file", file=sys.stderr)
        return 2
    topic = args.topic or settings.map_topic
    if not topic:
        print("cx-stream map: no raw topic: give --topic or CX_MAP_TOPIC", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    if settings.map_http_port:
        start_http_server(settings.map_http_port, addr=settings.http_host,
                          registry=mapper.metrics.registry)
    return asyncio.run(consume(mapper, topic))


def _records(path: str) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield number, line.rstrip(b"\r\n")


def _from_file(mapper: Mapper, path: str, to_stdout: bool,
               out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        counts = asyncio.run(_map_file(mapper, path, to_stdout, out, err))
    except OSError as exc:
        print(f"cx-stream map: {exc}", file=err)
        return 1
    print(f"cx-stream map: {counts[0]} records: {counts[1]} events, {counts[2]} dead letters",
          file=err)
    return 0


async def _map_file(mapper: Mapper, path: str, to_stdout: bool, out: TextIO,
                    err: TextIO) -> tuple[int, int, int]:
    """Map a JSONL file record by record; publish as it goes (the publisher waits for every
    acknowledgement before it closes), or print."""
    from service.adapters.kafka_publish import EventPublisher

    records = events = dead = 0
    publisher = None if to_stdout else EventPublisher(mapper.settings)
    if publisher is not None:
        await publisher.start()
    try:
        for number, line in _records(path):
            result, produced = mapper.map(InputMessage(path, 0, number, None, line, None))
            records += 1
            events += len(result.events)
            dead += len(result.failures)
            if publisher is not None:
                for topic, key, value in produced:
                    await publisher.send_raw(topic, key, value)
                continue
            for event in result.events:
                out.write(orjson.dumps({"topic": event.kind, "event": event.event}).decode()
                          + "\n")
            for failure in result.failures:
                err.write(orjson.dumps({"line": number, "reason": failure.reason.value,
                                        "field": failure.field,
                                        "message": failure.message}).decode() + "\n")
    finally:
        if publisher is not None:
            await publisher.close()
    return records, events, dead


async def consume(mapper: Mapper, topic: str) -> int:
    """Map the raw topic until SIGTERM or SIGINT; the batch in hand is finished first."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.errors import CommitFailedError, KafkaConnectionError

    from service.adapters.kafka_admin import ensure_topics

    settings = mapper.settings
    await ensure_topics(settings)
    group = settings.map_group_id or f"{settings.group_id}-map-{mapper.spec.source}"
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka_bootstrap, group_id=group,
        enable_auto_commit=False, auto_offset_reset="earliest",
        session_timeout_ms=int(settings.kafka_session_timeout * 1000),
        **kafka_options(settings))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=5,
                                **kafka_options(settings))
    try:
        await producer.start()
        await consumer.start()
    except KafkaConnectionError as exc:
        failure = await kafka_startup_failure(settings)
        await consumer.stop()
        await producer.stop()
        if failure is not None:
            raise failure from exc
        raise
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    log.info("mapping %s records from %s (group %s)", mapper.spec.source, topic, group)
    try:
        while not stopping.is_set():
            batch = await consumer.getmany(timeout_ms=500,
                                           max_records=settings.batch_max_events)
            if not batch:
                continue
            outputs: list[Output] = []
            offsets: dict[Any, int] = {}
            for tp, messages in batch.items():
                for m in messages:
                    _, produced = mapper.map(InputMessage(m.topic, m.partition, m.offset,
                                                          m.key, m.value, m.timestamp))
                    outputs.extend(produced)
                    offsets[tp] = m.offset + 1
            if not await _send(producer, outputs, settings.retry_max_backoff, stopping):
                log.warning("stopped while Kafka was unreachable: the batch in hand is not "
                            "committed and will be mapped again")
                return 1
            try:
                await consumer.commit(offsets)
            except CommitFailedError as exc:  # a rebalance: the batch comes again, same ids
                log.warning("offsets not committed (%s); the batch will be mapped again", exc)
    finally:
        await consumer.stop()
        await producer.stop()
    return 0


async def _send(producer: Any, outputs: list[Output], max_backoff: float,
                stopping: asyncio.Event) -> bool:
    """Publish every record and wait for all acknowledgements; while Kafka is unreachable,
    send the whole batch again (the worker drops what was already applied). False when asked
    to stop before the batch was acknowledged."""
    backoff = 0.1
    while True:
        try:
            futures = [await producer.send(topic, value=value, key=key)
                       for topic, key, value in outputs]
            await asyncio.gather(*futures)
            return True
        except Exception as exc:
            if not kafka_transient(exc):
                raise
            log.warning("publishing failed (%s); retrying in %.1fs", exc, backoff)
        try:
            await asyncio.wait_for(stopping.wait(), backoff)
            return False
        except TimeoutError:
            backoff = min(backoff * 2, max_backoff)
