"""What the worker retries (a dependency down or busy) and what stops it (a defect)."""

from __future__ import annotations

import pytest
from aiokafka.errors import KafkaTimeoutError, NotLeaderForPartitionError
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from service.adapters.failures import is_transient


@pytest.mark.parametrize(
    "exc",
    [
        RedisConnectionError("Connection refused"),
        BusyLoadingError("LOADING Redis is loading the dataset in memory"),
        ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"),
        ResponseError("CLUSTERDOWN The cluster is down"),
        KafkaTimeoutError(),
        NotLeaderForPartitionError(),
        ConnectionResetError(),
        TimeoutError(),
    ],
)
def test_dependency_failures_are_retried(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ResponseError("ERR Error running script: attempt to index a nil value"),
        KeyError("p"),
        ValueError("cannot decode"),
        TypeError("unexpected"),
    ],
)
def test_defects_are_not_retried(exc: BaseException) -> None:
    assert not is_transient(exc)
