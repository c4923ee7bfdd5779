"""Which failures of Redis and Kafka waiting can cure: the adapters' side of `is_transient`.

The service layer never names a client library's exception: it asks the port
(`PartitionStore.is_transient`, `OutputSink.is_transient`), whose adapters answer here."""

from __future__ import annotations

from collections.abc import Mapping

from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from redis.exceptions import RedisError
from redis.exceptions import ResponseError as RedisResponseError

# Redis replies that say "busy, moving or starting: ask again" rather than "wrong command".
_TRANSIENT_REPLIES = ("LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "READONLY",
                      "NOREPLICAS", "MOVED", "ASK")


def redis_transient(exc: BaseException) -> bool:
    """Whether waiting and trying again can succeed: Redis is down, slow, busy or moving."""
    if isinstance(exc, RedisResponseError):
        return str(exc).split(" ", 1)[0] in _TRANSIENT_REPLIES
    return isinstance(exc, RedisError | OSError | TimeoutError)


def kafka_transient(exc: BaseException) -> bool:
    """Whether waiting and trying again can succeed: the broker is down, slow or electing."""
    return isinstance(exc, KafkaError | ProducerSendError | OSError | TimeoutError)


def is_transient(exc: BaseException) -> bool:
    """Either dependency's transient failure (for code that talks to both)."""
    return redis_transient(exc) or kafka_transient(exc)


class RecordsTooLarge(Exception):
    """Some records are over the size the broker accepts: sending them again cannot succeed.
    The others of the call were published (OutputSink.send)."""

    def __init__(self, sizes: Mapping[int, int], limit: int) -> None:
        super().__init__(f"{len(sizes)} record(s) over the limit of {limit} bytes")
        self.sizes = dict(sizes)  # index in the records sent -> bytes
        self.limit = limit
