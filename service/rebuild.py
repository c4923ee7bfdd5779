"""`cx-stream rebuild`: recompute the state under new rules, then switch the readers to it.

The rebuild reads the input topics from the start of their retention (or, when run again,
from the offsets its namespace already applied) with the workers' own pipeline
(IngestProcessor), into the state of policy version CX_POLICY_VERSION, while the running
workers keep writing and serving the version in force. Nothing is published to Kafka during
the replay: the enriched contacts, alerts and dead letters it recomputes are counted and
dropped, so downstream consumers do not get a second copy of every contact. Once it reached
the end offsets taken at its start, and then came within `--switch-lag` messages of the live
end, it commits its positions to the consumer group of the new version's workers and points
the readers at the new version with one atomic SET.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from queue import Empty
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from service.adapters import redis_state
from service.adapters.connections import kafka_options, redis_options
from service.adapters.erasure_store import ErasureKeyError, ErasureStore, erasure_key
from service.adapters.kafka_admin import ensure_layout
from service.adapters.metrics import PipelineMetrics
from service.adapters.policy_versions import PolicyMismatch, PolicyVersions
from service.adapters.redis_state import RedisState
from service.config import Settings, policy_of, worker_group
from service.domain.cardinality import LabelCaps
from service.domain.partition import PartitionClock
from service.gc_settings import tune_garbage_collector
from service.service_layer.ingest import (
    BatchOutcome,
    IngestProcessor,
    IngestSettings,
    InputMessage,
    ProcessingDefect,
)
from service.service_layer.ports import OutputRecord
from service.service_layer.suppression import Suppression

log = logging.getLogger(__name__)
COMMIT_EVERY = 5.0
# Bytes fetched per partition at a time (the consumer's default is 1 MiB, about 2,000 events):
# enough for a partition's share of a CX_REBUILD_BATCH_MAX_EVENTS batch in one fetch.
REBUILD_FETCH_BYTES = 8 * 1024 * 1024


def _replay_consumer(settings: Settings) -> AIOKafkaConsumer:
    """A consumer of the input topics for a replay, in the new version's group: the caller
    assigns the partitions, seeks and commits (`_commit`); batches of
    CX_REBUILD_BATCH_MAX_EVENTS, fetches of REBUILD_FETCH_BYTES per partition."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=settings.worker_group_id,
        enable_auto_commit=False, auto_offset_reset="earliest",
        max_poll_records=settings.rebuild_batch_max_events,
        max_partition_fetch_bytes=REBUILD_FETCH_BYTES, **kafka_options(settings))


class Refused(Exception):
    """The rebuild or drop would break what readers or workers rely on; nothing was done."""


class DiscardedOutputs:
    """The sink of a rebuild: counts what a worker would publish, publishes nothing."""

    def __init__(self) -> None:
        self.by_topic: Counter[str] = Counter()

    async def send(self, records: Sequence[OutputRecord]) -> None:
        for topic, _, _ in records:
            self.by_topic[topic] += 1

    def is_transient(self, exc: BaseException) -> bool:
        return False  # sending nothing cannot fail


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress_line(version: str, done: int, total: int, elapsed: float,
                  outcome: BatchOutcome, live_lag: int | None = None) -> str:
    """One progress report: messages replayed of the total, rate, ETA, what they did."""
    rate = done / elapsed if elapsed > 0 else 0.0
    share = min(done / total, 1.0) if total else 1.0
    remaining = max(total - done, 0)
    eta = _clock(remaining / rate) if rate > 0 else "0:00:00" if not remaining else "unknown"
    line = (f"rebuild v{version}: {done:,} of {total:,} messages ({share:.1%}), "
            f"{rate:,.0f}/s, ETA {eta}; applied {outcome.applied:,}, duplicates "
            f"{outcome.duplicates:,}, invalid {outcome.invalid:,}, too late "
            f"{outcome.too_late:,}")
    if outcome.suppressed:
        line += f", of erased customers (dropped) {outcome.suppressed:,}"
    if live_lag is not None:
        line += f"; catching up with live traffic: {live_lag:,} messages behind"
    return line


@dataclass
class RebuildReport:
    version: str
    previous: str | None
    switched: bool
    replayed: int = 0
    total: int = 0
    seconds: float = 0.0
    outcome: BatchOutcome = field(default_factory=BatchOutcome)
    suppressed: dict[str, int] = field(default_factory=dict)


def _add(total: BatchOutcome, part: BatchOutcome) -> None:
    for name in ("applied", "duplicates", "invalid", "too_late", "updates", "alerts",
                 "suppressed"):
        setattr(total, name, getattr(total, name) + getattr(part, name))


def _state(settings: Settings, client: Any, prefix: str) -> RedisState:
    return RedisState(client, prefix, state_ttl=settings.state_idle_ttl,
                      counter_ttl=settings.counter_retention,
                      contact_ttl=settings.contact_view_ttl)


def _versions(settings: Settings, client: Any) -> PolicyVersions:
    return PolicyVersions(client, settings.key_prefix, policy_of(settings),
                          lambda prefix: _state(settings, client, prefix))


async def group_is_active(settings: Settings, group: str) -> bool:
    """Whether the consumer group has members (workers) right now."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap,
                                request_timeout_ms=15000, **kafka_options(settings))
    await admin.start()
    try:
        for response in await admin.describe_consumer_groups([group]):
            for described in response.groups:
                state, members = described[2], described[5]
                if members or state not in ("Empty", "Dead", ""):
                    return True
        return False
    finally:
        await admin.close()


async def rebuild(settings: Settings, *, switch: bool = True, switch_lag: int | None = None,
                  progress_every: float = 10.0, out: TextIO,
                  stop: asyncio.Event | None = None, processes: int = 1) -> RebuildReport:
    """Replay into version CX_POLICY_VERSION; switch the readers to it unless told not to.
    `processes` > 1: the replay up to the end offsets taken at the start is split by
    partition over that many processes; this one then catches up with live traffic and
    switches."""
    stop = stop or asyncio.Event()
    version = settings.policy_version
    switch_lag = settings.batch_max_events if switch_lag is None else switch_lag
    _, partitions = await ensure_layout(settings)
    client = redis_state.connect(settings.redis_url, **redis_options(settings))
    versions = _versions(settings, client)
    consumer: AIOKafkaConsumer | None = None
    try:
        previous = await versions.active()
        served = previous or "1"
        if served == version:
            raise Refused(
                f"policy version {version} is the one readers serve already; a rebuild "
                f"writes a new version: set CX_POLICY_VERSION to a number not used yet")
        await versions.claim(versions.own)
        # Erased customers' events are dropped: a replay does not bring them back.
        suppression = Suppression(ErasureStore(client, settings.key_prefix),
                                  erasure_key(settings))
        await suppression.load()  # a key that cannot recognise them stops the rebuild here
        state = versions.state_of(version)
        clocks = await state.read_clocks(partitions)
        consumer = _replay_consumer(settings)
        await consumer.start()
        tps = [TopicPartition(t, p) for t in settings.input_topics for p in range(partitions)]
        consumer.assign(tps)
        beginning = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        target = dict(ends)  # the end offsets when the rebuild started
        total = _seek_to_applied(consumer, tps, beginning, target, clocks)
        processes = max(1, min(processes, partitions))
        split = f" with {processes} processes" if processes > 1 and total else ""
        print(f"rebuild v{version}: replaying {total:,} messages of {len(tps)} partitions into "
              f"policy version {version}{split} (readers serve version {served} meanwhile)",
              file=out, flush=True)

        report = RebuildReport(version, previous, switched=False, total=total)
        started = time.monotonic()
        if processes > 1 and total:
            consumer.pause(*tps)  # nothing to fetch here until the processes are done
            await _replay_in_processes(settings, processes, target, report, out,
                                       progress_every, stop, started)
            if stop.is_set():
                report.seconds = time.monotonic() - started
                return _interrupted(report, out)
            # where the processes got to
            _seek_to_applied(consumer, tps, beginning, target,
                             await state.read_clocks(partitions))
            consumer.resume(*tps)

        sink = DiscardedOutputs()
        processor = _processor(settings, versions, state, sink, suppression,
                               _lagging(consumer, ends))
        last_report = last_commit = time.monotonic()
        replaying = True
        live_lag: int | None = None
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=200,
                                             max_records=settings.rebuild_batch_max_events)
            batch = [InputMessage(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
                     for msgs in fetched.values() for m in msgs]
            if batch:
                _add(report.outcome, await processor.process(batch))
                report.replayed += sum(1 for m in batch
                                       if m.offset < target[TopicPartition(m.topic,
                                                                           m.partition)])
            positions = {tp: await consumer.position(tp) for tp in tps}
            if replaying and all(positions[tp] >= target[tp] for tp in tps):
                replaying = False
            if not replaying:
                ends = await consumer.end_offsets(tps)
                live_lag = sum(max(ends[tp] - positions[tp], 0) for tp in tps)
                if live_lag <= switch_lag:
                    break
            now = time.monotonic()
            if now - last_commit >= COMMIT_EVERY:
                await _commit(consumer)
                last_commit = now
            if now - last_report >= progress_every:
                print(progress_line(version, report.replayed, total, now - started,
                                    report.outcome, live_lag), file=out, flush=True)
                last_report = now
        report.seconds = time.monotonic() - started
        for topic, n in sink.by_topic.items():
            report.suppressed[topic] = report.suppressed.get(topic, 0) + n
        await _commit(consumer)
        print(progress_line(version, report.replayed, total, report.seconds, report.outcome,
                            live_lag), file=out, flush=True)
        if stop.is_set():
            return _interrupted(report, out)
        if switch:
            await _switch(versions, previous, report, settings, served, out)
        else:
            print(f"rebuild v{version}: caught up; readers still serve version {served} "
                  f"(run again without --no-switch to catch up and switch)", file=out,
                  flush=True)
        return report
    finally:
        if consumer is not None:
            await consumer.stop()
        await client.aclose()


def _interrupted(report: RebuildReport, out: TextIO) -> RebuildReport:
    print(f"rebuild v{report.version}: interrupted; run the same command again to resume "
          "from where it stopped", file=out, flush=True)
    return report


def _lagging(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]
             ) -> Callable[[str, int, int | None], bool]:
    """Whether a partition has messages after `last` (the consumer's high watermark, else the
    end offsets read at the start): the pipeline's rule for holding a watermark back."""

    def lagging(topic: str, partition: int, last: int | None) -> bool:
        tp = TopicPartition(topic, partition)
        high = consumer.highwater(tp)
        if high is None:
            high = ends.get(tp, 0)
        return bool(high - ((-1 if last is None else last) + 1) > 0)

    return lagging


def _seek_to_applied(consumer: AIOKafkaConsumer, tps: list[TopicPartition],
                     beginning: dict[TopicPartition, int], target: dict[TopicPartition, int],
                     clocks: dict[int, PartitionClock]) -> int:
    """Seek each input partition to the offset after the last one applied in this version;
    the messages left to replay up to `target`."""
    total = 0
    for tp in tps:
        applied = clocks[tp.partition].offsets.get(tp.topic)
        position = beginning[tp] if applied is None else max(beginning[tp], applied + 1)
        consumer.seek(tp, position)
        total += max(target[tp] - position, 0)
    return total


async def _switch(versions: PolicyVersions, previous: str | None, report: RebuildReport,
                  settings: Settings, served: str, out: TextIO) -> None:
    """Switch the readers to the rebuilt version (refused if another switch came first)."""
    version = report.version
    now_served = await versions.switch(previous, version)
    if now_served != version:
        raise Refused(f"the served version changed to {now_served} during the "
                      f"rebuild; readers were not switched to {version}")
    report.switched = True
    print(f"rebuild v{version}: readers switched from version {served} to {version}. "
          f"Now restart the workers with CX_POLICY_VERSION={version} and the new "
          f"rules; they continue from this rebuild's offsets (consumer group "
          f"{settings.worker_group_id}).", file=out, flush=True)


def _processor(settings: Settings, versions: PolicyVersions, state: RedisState,
               sink: DiscardedOutputs, suppression: Suppression,
               lagging: Any) -> IngestProcessor:
    caps = LabelCaps(settings.max_queues, settings.max_segments, settings.max_agents,
                     settings.max_reasons, settings.contact_costs, topics=settings.max_topics)
    return IngestProcessor(
        store=state, sink=sink, metrics=PipelineMetrics(settings.input_topics),
        settings=IngestSettings.of(settings, versions.own, lagging, caps),
        suppression=suppression)


# What a replaying process reports to the rebuild: (messages replayed, applied, duplicates,
# invalid, too late, updates, alerts, suppressed) since its last report, or at its end
# ("done", records not published by topic) or ("failed", what went wrong).
_COUNTS = ("applied", "duplicates", "invalid", "too_late", "updates", "alerts", "suppressed")


async def _replay_in_processes(settings: Settings, processes: int,
                               target: dict[TopicPartition, int], report: RebuildReport,
                               out: TextIO, progress_every: float, stop: asyncio.Event,
                               started: float) -> None:
    """Replay up to `target` with the partitions split over `processes` processes (partition
    p goes to process p mod N), each with its own consumer, store client and pipeline; add
    what they did to `report`. Each commits its offsets and its partitions' clocks as a
    single rebuild would, so an interrupted rebuild resumes from them."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    halt = context.Event()
    shares = [context.Process(target=_share_main, name=f"cx-rebuild-{i}",
                              args=(settings, i, processes, dict(target), queue, halt),
                              daemon=True)
              for i in range(processes)]
    for share in shares:
        share.start()
    running = len(shares)
    failure: str | None = None
    last_report = time.monotonic()
    try:
        while running:
            if stop.is_set():
                halt.set()  # each process stops after the batch in hand
            try:
                item = queue.get_nowait()
            except Empty:
                if not any(share.is_alive() for share in shares) and queue.empty():
                    failure = failure or "a replaying process exited unexpectedly"
                    break
                await asyncio.sleep(0.05)
                continue
            if item[0] == "done":
                running -= 1
                for topic, n in item[1].items():
                    report.suppressed[topic] = report.suppressed.get(topic, 0) + n
            elif item[0] == "failed":
                running -= 1
                failure = item[1]
                halt.set()
            else:
                report.replayed += item[0]
                for name, n in zip(_COUNTS, item[1:], strict=True):
                    setattr(report.outcome, name, getattr(report.outcome, name) + n)
                now = time.monotonic()
                if now - last_report >= progress_every:
                    print(progress_line(settings.policy_version, report.replayed,
                                        report.total, now - started, report.outcome),
                          file=out, flush=True)
                    last_report = now
    finally:
        halt.set()
        for share in shares:
            share.join(60)
            if share.is_alive():
                share.kill()
    if failure is not None:
        raise RuntimeError(f"the rebuild's replay failed: {failure}")


def _share_main(settings: Settings, index: int, count: int, target: dict[TopicPartition, int],
                queue: Any, halt: Any) -> None:
    """A replaying process of `_replay_in_processes` (signals are the rebuild's to handle)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tune_garbage_collector()
    try:
        asyncio.run(_replay_share(settings, index, count, target, queue, halt))
    except BaseException as exc:
        queue.put(("failed", f"process {index + 1} of {count}: {exc!r}"))
        raise


async def _replay_share(settings: Settings, index: int, count: int,
                        target: dict[TopicPartition, int], queue: Any, halt: Any) -> None:
    client = redis_state.connect(settings.redis_url, **redis_options(settings))
    versions = _versions(settings, client)
    consumer: AIOKafkaConsumer | None = None
    try:
        suppression = Suppression(ErasureStore(client, settings.key_prefix),
                                  erasure_key(settings))
        await suppression.load()
        state = versions.state_of(settings.policy_version)
        tps = [tp for tp in target if tp.partition % count == index]
        clocks = await state.read_clocks(max(tp.partition for tp in target) + 1)
        consumer = _replay_consumer(settings)
        await consumer.start()
        consumer.assign(tps)
        beginning = await consumer.beginning_offsets(tps)
        _seek_to_applied(consumer, tps, beginning, target, clocks)
        sink = DiscardedOutputs()
        processor = _processor(settings, versions, state, sink, suppression,
                               _lagging(consumer, target))
        last_commit = time.monotonic()
        left = [tp for tp in tps if await consumer.position(tp) < target[tp]]
        while left and not halt.is_set():
            fetched = await consumer.getmany(*left, timeout_ms=200,
                                             max_records=settings.rebuild_batch_max_events)
            batch = [InputMessage(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
                     for msgs in fetched.values() for m in msgs]
            if batch:
                outcome = await processor.process(batch)
                replayed = sum(1 for m in batch
                               if m.offset < target[TopicPartition(m.topic, m.partition)])
                queue.put((replayed, *(getattr(outcome, name) for name in _COUNTS)))
            left = [tp for tp in left if await consumer.position(tp) < target[tp]]
            if time.monotonic() - last_commit >= COMMIT_EVERY:
                await _commit(consumer)
                last_commit = time.monotonic()
        await _commit(consumer)
        queue.put(("done", dict(sink.by_topic)))
    finally:
        if consumer is not None:
            await consumer.stop()
        await client.aclose()


async def _commit(consumer: AIOKafkaConsumer) -> None:
    """Commit the positions to the new version's group; the workers start from them."""
    try:
        await consumer.commit()
    except KafkaError as exc:  # e.g. workers of the version joined: they position themselves
        log.warning("could not commit the rebuild's offsets: %s", exc)


async def drop_version(settings: Settings, version: str, *, out: TextIO) -> int:
    """Delete a policy version's state; refuse the served version and one still written."""
    client = redis_state.connect(settings.redis_url, **redis_options(settings))
    try:
        versions = _versions(settings, client)
        served = await versions.active() or "1"
        if version == served:
            raise Refused(f"policy version {version} is the one readers serve; switch to "
                          "another version first")
        group = worker_group(settings.group_id, version)
        if await group_is_active(settings, group):
            raise Refused(f"workers of policy version {version} still run (consumer group "
                          f"{group}); stop them first")
        deleted = await versions.drop(version)
        print(f"dropped policy version {version}: {deleted:,} keys deleted (readers serve "
              f"version {served})", file=out, flush=True)
        return deleted
    finally:
        await client.aclose()


def run_rebuild(settings: Settings, args: Any, out: TextIO) -> int:
    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_signal() -> None:
            if stop.is_set() and task is not None:
                task.cancel()  # a second signal: stop now (what is stored stays consistent)
                return
            stop.set()
            print("cx-stream rebuild: stopping after the batch in hand (signal again to stop "
                  "at once)", file=out, flush=True)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            if args.drop_version is not None:
                await drop_version(settings, str(args.drop_version), out=out)
                return 0
            report = await rebuild(settings, switch=not args.no_switch,
                                   switch_lag=args.switch_lag,
                                   progress_every=args.progress_every, out=out, stop=stop,
                                   processes=args.processes or os.cpu_count() or 1)
        except (Refused, PolicyMismatch, ErasureKeyError) as exc:
            print(f"cx-stream rebuild: {exc}", file=out, flush=True)
            return 2
        except ProcessingDefect as exc:
            if isinstance(exc.__cause__, ErasureKeyError):
                print(f"cx-stream rebuild: {exc.__cause__}", file=out, flush=True)
                return 2
            raise
        except asyncio.CancelledError:
            print("cx-stream rebuild: stopped; run the same command again to resume",
                  file=out, flush=True)
            return 130
        if stop.is_set():
            return 130
        for topic, n in sorted(report.suppressed.items()):
            print(f"rebuild v{report.version}: not published (recomputed during the replay): "
                  f"{n:,} records for {topic}", file=out, flush=True)
        return 0

    tune_garbage_collector()  # the worker's settings: a replay allocates as a worker does
    return asyncio.run(main())
