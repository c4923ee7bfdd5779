"""Calling a dependency until it succeeds: the worker never skips a message while Redis or
Kafka is down, slow or busy; it waits, backing off, and says so in its metrics and log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from service.adapters.metrics import PipelineMetrics
from service.service_layer.ports import ProcessingDefect, WriteConflict

log = logging.getLogger(__name__)
T = TypeVar("T")


class Dependency(Protocol):
    def is_transient(self, exc: BaseException) -> bool: ...


class Retrying:
    """Per dependency name ("redis", "kafka"): whether its last call succeeded (`healthy`,
    the readiness probe's answer) and the `cx_dependency_up` / retry metrics."""

    def __init__(self, metrics: PipelineMetrics, max_backoff: float) -> None:
        self._metrics = metrics
        self._max_backoff = max_backoff
        self.healthy = {"redis": True, "kafka": True}

    async def call(self, name: str, dependency: Dependency,
                   call: Callable[[], Awaitable[T]]) -> T:
        """Call until it succeeds. A failure the dependency says waiting cannot cure (and
        anything else raised) becomes a ProcessingDefect; cancellation propagates."""
        delay = 0.05
        while True:
            try:
                result = await call()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not (isinstance(exc, WriteConflict) or dependency.is_transient(exc)):
                    raise ProcessingDefect(f"{type(exc).__name__}: {exc}") from exc
                self.healthy[name] = False
                self._metrics.dependency_up.labels(name).set(0)
                self._metrics.retries.labels(name).inc()
                log.warning("%s failed (%s: %s); retrying in %.2fs",
                            name, type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff)
                continue
            if not self.healthy[name]:
                log.info("%s is reachable again", name)
                self.healthy[name] = True
                self._metrics.dependency_up.labels(name).set(1)
            return result
