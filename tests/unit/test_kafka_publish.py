"""The producer adapter: the partition of a key, and which send failures are worth retrying."""

from __future__ import annotations

from typing import Any, cast

import faust
from aiokafka.errors import KafkaConnectionError
from aiokafka.partitioner import DefaultPartitioner

from service.adapters.kafka_publish import KafkaOutputs, partition_of

KEYS = ("cust-1", "cust-000042", "12345", "ab-990801-AA0204-43678", "")


def test_partition_of_matches_kafkas_default_partitioner() -> None:
    # aiokafka's DefaultPartitioner is the Java client's murmur2 partitioner.
    partitioner = DefaultPartitioner()
    for partitions in (1, 6, 7):
        every = list(range(partitions))
        for key in KEYS:
            expected = partitioner(key.encode(), every, every)
            assert partition_of(key, partitions) == expected
            assert partition_of(key.encode(), partitions) == expected  # the API's and the sink's


def test_the_keys_spread_over_the_partitions() -> None:
    assert len({partition_of(f"cust-{n}", 6) for n in range(100)}) == 6


def test_a_record_without_a_key_goes_to_one_of_the_partitions() -> None:
    assert {partition_of(None, 3) for _ in range(200)} <= {0, 1, 2}


def test_outputs_retry_what_the_broker_may_cure() -> None:
    outputs = KafkaOutputs(cast(faust.App, cast(Any, object())))
    assert outputs.is_transient(KafkaConnectionError())
    assert outputs.is_transient(TimeoutError())
    assert not outputs.is_transient(ValueError("bad record"))
