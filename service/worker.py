"""The cx-stream worker: a Faust app consuming the three input topics.

One agent (concurrency 1) reads all assigned partitions of the three topics, each partition
in order. Events are taken in batches with `noack_take`, applied, and only then acknowledged:
Faust commits an offset only once every event up to it was acknowledged, so an offset is never
committed ahead of stored effects. (Faust's plain `take` acknowledges a batch even when the
agent raised on it; that is why it is not used.)

Redis may lose the writes of its last second when it dies (AOF `everysec`) although it
acknowledged them, and their offsets may already be committed to Kafka. Two guards keep that
from losing events (docs/reliability.md): on every partition assignment the worker seeks each
input partition back to the offset after the last one applied in Redis when Kafka's committed
offset is ahead of it; and a worker that finds Redis restarted under it (a new run id) stops
with exit code 75 before writing anything, so that its restart takes that path
(adapters/redis_restarts.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import faust
from faust.types import TP, EventT, StreamT
from redis.exceptions import RedisError

from service.adapters import redis_state
from service.adapters.business_metrics import BusinessMetrics
from service.adapters.connections import faust_credentials, redis_options, redis_startup_failure
from service.adapters.drivers_gauges import DriverGauges
from service.adapters.erasure_store import ErasureKeyError, ErasureStore, erasure_key
from service.adapters.event_loop import use_event_loop
from service.adapters.http import install_routes
from service.adapters.http_security import HttpGuard, api_auth_required
from service.adapters.kafka_admin import ensure_layout
from service.adapters.kafka_publish import KafkaOutputs
from service.adapters.metrics import PipelineMetrics, watch_loop_lag
from service.adapters.policy_versions import PolicyMismatch, PolicyVersions
from service.adapters.redis_modes import RedisClient
from service.adapters.redis_restarts import (
    EXIT_DEFECT,
    EXIT_REDIS_RESTARTED,
    RedisRestarted,
    guard_redis_restarts,
    rewind_to_applied,
)
from service.adapters.redis_state import RedisState
from service.config import Settings, policy_of
from service.domain.cardinality import LabelCaps
from service.domain.policy import Policy
from service.gc_settings import FreeMemoryTrim, freeze_startup_heap, tune_garbage_collector
from service.redrive import REDRIVE_HEADER
from service.service_layer.ingest import IngestProcessor, IngestSettings, InputMessage
from service.service_layer.ports import ProcessingDefect
from service.service_layer.state_cache import StateCache
from service.service_layer.suppression import Suppression

log = logging.getLogger(__name__)
SWITCH_INTERVAL = 0.001  # seconds; see run_worker
EXIT_SHUTDOWN_TIMEOUT = 124  # shutdown took longer than CX_SHUTDOWN_TIMEOUT: ended by force


def _message_of(event: EventT[Any]) -> InputMessage:
    msg = event.message
    timestamp = msg.timestamp
    headers = msg.headers
    return InputMessage(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key=msg.key,
        value=msg.value,
        timestamp_ms=int(timestamp * 1000) if timestamp else None,
        redriven=bool(headers) and _redriven(headers),
    )


def _redriven(headers: Any) -> bool:
    """Whether the message carries the header `cx-stream redrive` puts on what it sends."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return any(name == REDRIVE_HEADER for name, _ in items)


@dataclass(frozen=True)
class _Parts:
    """What the pipeline, the HTTP API and the gauges of one worker share."""

    settings: Settings
    app: faust.App
    partitions: int
    metrics: PipelineMetrics
    policy: Policy
    state: RedisState
    versions: PolicyVersions
    # Queue, segment and agent names with counters of their own: shared by the pipeline and
    # the gauges, whose refresh ranks them by contacts.
    caps: LabelCaps
    # Set once the worker first joined its group: readiness, and the end of the startup heap.
    group_joined: asyncio.Event = field(default_factory=asyncio.Event)


def build_app(settings: Settings, partitions: int) -> faust.App:
    """The worker: a Faust app with the pipeline, the HTTP API and the gauges wired in."""
    guard = HttpGuard(settings)  # API auth, CORS, limits (docs/security.md)
    app = faust_app(settings, guard)
    metrics = PipelineMetrics(settings.input_topics)
    guard.register(metrics.registry)
    policy = policy_of(settings)
    state = _state(settings, redis_state.connect(settings.redis_url, **redis_options(settings)),
                   settings.state_prefix)
    # Readers serve the active policy version (docs/rebuild.md); the worker writes its own.
    versions = PolicyVersions(state.client, settings.key_prefix, policy,
                              lambda prefix: _state(settings, state.client, prefix),
                              cache_seconds=settings.policy_cache)
    guard_redis_restarts(state.client)
    rewind_to_applied(app, state, settings.input_topics, partitions)
    parts = _Parts(settings, app, partitions, metrics, policy, state, versions,
                   LabelCaps(settings.max_queues, settings.max_segments, settings.max_agents,
                             settings.max_reasons, settings.contact_costs,
                             topics=settings.max_topics))
    processor = wire_pipeline(parts)
    business = wire_gauges(parts)
    wire_http(parts, guard, processor, business)
    return app


def faust_app(settings: Settings, guard: HttpGuard) -> faust.App:
    """The Faust app: its Kafka consumer and producer, and its web server (the HTTP API)."""
    return faust.App(
        settings.worker_group_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
        store="memory://",
        autodiscover=False,
        datadir=settings.data_dir or tempfile.mkdtemp(prefix="cx-stream-"),
        web_enabled=True,
        web_bind=settings.http_host,
        web_port=settings.http_port,
        web_host=settings.http_host,
        topic_disable_leader=True,
        topic_allow_declare=False,
        topic_replication_factor=settings.topic_replication,
        topic_partitions=settings.topic_partitions,
        consumer_auto_offset_reset="earliest",
        # A partition assigned before its leader was known is fetched once the consumer's
        # metadata is refreshed: every 15 s, not aiokafka's 5 minutes (new topics, moved leaders).
        consumer_metadata_max_age_ms=15_000,
        broker_commit_interval=settings.commit_interval,
        broker_session_timeout=settings.kafka_session_timeout,
        broker_heartbeat_interval=min(3.0, settings.kafka_session_timeout / 3),
        producer_acks=-1,
        producer_max_batch_size=256 * 1024,  # outputs go in batches (KafkaOutputs)
        stream_wait_empty=True,
        broker_credentials=faust_credentials(settings),
        web_application_options=guard.application_options(),
    )


def wire_pipeline(parts: _Parts) -> IngestProcessor:
    """The batch processor and the agent that feeds it the input topics' events; the state
    cache dropped on every rebalance."""
    settings, app = parts.settings, parts.app
    # Customer states kept between batches (service_layer/state_cache.py); a rebalance drops
    # them: another worker may write a partition in between.
    cache = (StateCache(settings.state_cache_mb * 1024 * 1024, settings.state_idle_ttl)
             if settings.state_cache_mb else None)
    processor = _processor(parts, cache)
    input_topic = app.topic(
        *settings.input_topics,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        allow_empty=True,
    )
    app.agent(input_topic, name="contact-events", concurrency=1,
              sink=None)(_batch_agent(settings, processor))

    @app.on_rebalance_complete.connect
    async def _joined(*args: Any, **kwargs: Any) -> None:
        if not parts.group_joined.is_set():
            freeze_startup_heap()
        parts.group_joined.set()

    if cache is not None:
        def _drop(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            """Revoked or assigned (the signals' first argument): forget those partitions."""
            cache.drop({tp.partition for tp in args[0]})

        app.on_partitions_revoked.connect(_drop)
        app.on_partitions_assigned.connect(_drop)
    return processor


def _processor(parts: _Parts, cache: StateCache | None) -> IngestProcessor:
    settings, app, metrics = parts.settings, parts.app, parts.metrics

    def lagging(topic: str, partition: int, last_applied: int | None) -> bool:
        """True while the topic-partition has messages this worker has not applied yet."""
        try:
            highwater = app.consumer.highwater(TP(topic, partition))
        except Exception:
            return True
        if highwater is None:
            return True
        behind = int(highwater) - ((-1 if last_applied is None else last_applied) + 1)
        metrics.lag.labels(topic, str(partition)).set(max(0, behind))
        return behind > 0

    return IngestProcessor(
        store=parts.state,
        sink=KafkaOutputs(app),
        metrics=metrics,
        settings=IngestSettings.of(settings, parts.policy, lagging, parts.caps),
        cache=cache,
        # Erased customers' events are dropped (docs/security.md)
        suppression=Suppression(ErasureStore(parts.state.client, settings.key_prefix),
                                erasure_key(settings)),
        fold_in_thread=True,  # lookups are answered while a batch is computed
    )


def _batch_agent(settings: Settings, processor: IngestProcessor
                 ) -> Callable[[StreamT[Any]], Awaitable[None]]:
    """The agent: batches of events applied, and acknowledged only once applied."""

    trim = FreeMemoryTrim()

    async def contact_events(stream: StreamT[Any]) -> None:
        # noack_take is on faust's Stream but not on its StreamT interface.
        async for events in stream.noack_take(  # type: ignore[attr-defined]
            settings.batch_max_events, within=settings.batch_max_wait
        ):
            batch = [_message_of(event) for event in events]
            task = asyncio.ensure_future(processor.process(batch))
            try:
                await asyncio.shield(task)
            except ProcessingDefect as exc:
                _stop_on_defect(exc, len(events))
            except asyncio.CancelledError:
                # Shutting down: finish the batch in hand, acknowledge it, then stop; leave
                # time within CX_SHUTDOWN_TIMEOUT for the rest of the shutdown (a retrying
                # batch is given up: it will be redelivered).
                try:
                    await asyncio.wait_for(task, batch_grace(settings.shutdown_timeout))
                except BaseException:
                    log.warning("shutdown: batch of %d not finished; it will be redelivered",
                                len(events))
                    raise
                for event in events:
                    await stream.ack(event)
                raise
            for event in events:
                await stream.ack(event)
            del events, batch, task  # what the batch fetched and built is free for the trim
            trim()

    return contact_events


def _stop_on_defect(exc: ProcessingDefect, events: int) -> NoReturn:
    """The batch is not acknowledged: exit at once, non-zero, so nothing after it is committed
    and a supervisor restarts the worker (the batch comes again)."""
    if isinstance(exc.__cause__, RedisRestarted):
        log.critical("stopping: %s", exc.__cause__)
        logging.shutdown()
        os._exit(EXIT_REDIS_RESTARTED)
    log.critical("stopping: a batch of %d cannot be applied", events, exc_info=True)
    logging.shutdown()
    os._exit(EXIT_DEFECT)


def wire_gauges(parts: _Parts) -> BusinessMetrics:
    """The event loop's lag, watched, and the business gauges (docs/metrics.md), refreshed on
    a timer from the policy version being served."""
    settings = parts.settings

    @parts.app.task  # type: ignore[untyped-decorator]
    async def loop_lag() -> None:
        loop = asyncio.get_running_loop()
        log.info("event loop: %s.%s", type(loop).__module__, type(loop).__name__)
        await watch_loop_lag(parts.metrics.loop_lag)

    business = BusinessMetrics(parts.metrics.registry, windows=settings.metrics_windows,
                               agent_labels=settings.metrics_agent_labels, policy=parts.policy,
                               fcr_target=settings.fcr_target, caps=parts.caps,
                               drivers=DriverGauges(parts.metrics.registry,
                                                    settings.contact_costs,
                                                    settings.fcr_target))

    business.policy_version.labels("writing").set(int(settings.policy_version))

    @parts.app.timer(interval=settings.metrics_refresh)  # type: ignore[untyped-decorator]
    async def refresh_business_metrics() -> None:
        try:
            served = await parts.versions.serving()
            await business.refresh(served.state, lambda: parts.partitions, served.policy)
        except Exception as exc:  # metrics must never stop the worker
            log.warning("business metrics not refreshed: %s: %s", type(exc).__name__, exc)

    return business


def wire_http(parts: _Parts, guard: HttpGuard, processor: IngestProcessor,
              business: BusinessMetrics) -> None:
    """The HTTP API on the app's web server: readiness, metrics, the wallboard and the
    customer, contact and FCR lookups (docs/api.md)."""
    app, state, settings = parts.app, parts.state, parts.settings

    async def readiness() -> dict[str, bool]:
        try:
            redis_ok = await state.ping()
        except Exception:
            redis_ok = False
        return {
            "redis": redis_ok and processor.healthy["redis"],
            "kafka": processor.healthy["kafka"] and await _kafka_reachable(app),
            "partitions_assigned": parts.group_joined.is_set() and not app.rebalancing,
            **guard.readiness(),  # with CX_API_TOKENS_FILE: whether it can be read
        }

    async def serving() -> tuple[RedisState, Policy]:
        served = await parts.versions.serving()
        return served.state, served.policy

    install_routes(app, parts.metrics.registry, readiness, state, parts.policy,
                   lambda: parts.partitions, wallboard=lambda: business.wallboard,
                   serving=serving, max_reads=settings.api_max_reads,
                   max_fcr=settings.api_max_fcr, costs=settings.contact_costs,
                   fcr_target=settings.fcr_target,
                   agent_min_contacts=settings.agent_min_contacts)


def _state(settings: Settings, client: RedisClient, prefix: str) -> RedisState:
    return RedisState(client, prefix, state_ttl=settings.state_idle_ttl,
                      counter_ttl=settings.counter_retention,
                      contact_ttl=settings.contact_view_ttl)


async def claim_policy_version(settings: Settings) -> None:
    """Record this version's rules (or check them: PolicyMismatch), and serve this version
    when no version was made active yet."""
    client = redis_state.connect(settings.redis_url, **redis_options(settings))
    versions = PolicyVersions(client, settings.key_prefix, policy_of(settings),
                              lambda prefix: _state(settings, client, prefix))
    delay = 0.5
    try:
        while True:
            try:
                await versions.claim(versions.own)
                await versions.activate_if_unset(settings.policy_version)
                return
            except (RedisError, OSError) as exc:  # Redis not reachable yet: wait for it
                log.warning("Redis not reachable (%s: %s); retrying in %.1fs",
                            type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, settings.retry_max_backoff)
    finally:
        await client.aclose()


async def check_erasure_key(settings: Settings) -> None:
    """ErasureKeyError when customers were erased and this worker's key cannot recognise
    them: it would apply their events again."""
    client = redis_state.connect(settings.redis_url, **redis_options(settings))
    try:
        await Suppression(ErasureStore(client, settings.key_prefix),
                          erasure_key(settings)).load()
    finally:
        await client.aclose()


def batch_grace(shutdown_timeout: float) -> float:
    """How long a shutdown waits for the batch in hand: the timeout less a margin for
    committing offsets and leaving the group."""
    return max(0.0, shutdown_timeout - min(5.0, shutdown_timeout / 4))


class BoundedShutdownWorker(faust.Worker):
    """A Faust worker whose shutdown ends within `shutdown_timeout` seconds of SIGTERM or
    SIGINT, whatever a batch, a dependency or a library is doing: a watchdog thread ends the
    process then (exit 124; the batch in hand was not acknowledged and is redelivered)."""

    shutdown_timeout = 30.0
    _watchdog: threading.Timer | None = None

    def _schedule_shutdown(self, signal: signal.Signals) -> None:
        if self._watchdog is None:
            self._watchdog = start_watchdog(self.shutdown_timeout)
        super()._schedule_shutdown(signal)


def start_watchdog(timeout: float) -> threading.Timer:
    """End the process with EXIT_SHUTDOWN_TIMEOUT once `timeout` seconds have passed."""

    def expire() -> None:
        try:  # not through logging: a stuck thread may hold its locks
            sys.stderr.write(f"cx-stream: shutdown took longer than CX_SHUTDOWN_TIMEOUT "
                             f"({timeout:g}s); stopping now (what was not acknowledged will "
                             "be delivered again)\n")
            sys.stderr.flush()
        finally:
            os._exit(EXIT_SHUTDOWN_TIMEOUT)

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    return timer


async def _kafka_reachable(app: faust.App) -> bool:
    """Ask the broker for metadata through the app's producer client."""
    client = getattr(getattr(app.producer, "_producer", None), "client", None)
    if client is None:
        return False
    try:
        return bool(await asyncio.wait_for(client.fetch_all_metadata(), timeout=2.0))
    except Exception:
        return False


def run_worker(settings: Settings) -> int:
    """Create missing topics, then run the Faust worker until SIGTERM/SIGINT."""
    api_auth_required(settings)  # an API left open on a public address stops us here
    use_event_loop(settings.event_loop)
    loop = asyncio.new_event_loop()
    try:
        # A refused password or an untrusted certificate stops the worker here, clearly.
        failure = loop.run_until_complete(redis_startup_failure(settings))
        if failure is not None:
            raise failure
        created, partitions = loop.run_until_complete(ensure_layout(settings))
        loop.run_until_complete(claim_policy_version(settings))
        loop.run_until_complete(check_erasure_key(settings))
    except (PolicyMismatch, ErasureKeyError) as exc:
        print(f"cx-stream: {exc}", file=sys.stderr)
        return 2
    finally:
        loop.close()
    if created:
        log.info("created topics: %s", ", ".join(created))
    asyncio.set_event_loop(asyncio.new_event_loop())
    app = build_app(settings, partitions)
    worker = BoundedShutdownWorker(app, loglevel=settings.log_level, quiet=True)
    worker.shutdown_timeout = settings.shutdown_timeout
    tune_garbage_collector()
    # A batch folds in a thread (service_layer/ingest.py): the event loop gets the interpreter
    # back within 1 ms, not CPython's 5 ms, to answer lookups (a few hand-overs each).
    sys.setswitchinterval(SWITCH_INTERVAL)
    worker.execute_from_commandline()
    return 0
