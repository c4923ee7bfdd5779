from __future__ import annotations

import pytest

from service.adapters.http import fcr_query, partition_of

Q = {"from": "2026-05-04T10:00:00Z", "to": "2026-05-04T12:00:00+00:00"}


def test_valid_query() -> None:
    assert fcr_query(Q) == (1777888800, 1777896000, "all")
    assert fcr_query({**Q, "queue": "sales"}) == (1777888800, 1777896000, "queue:sales")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"to": Q["to"]}, "'from' is required"),
        ({**Q, "from": "2026-05-04T10:30:00Z"}, "on the hour"),
        ({**Q, "to": "yesterday"}, "not an RFC 3339"),
        ({**Q, "to": Q["from"]}, "after"),
        ({**Q, "queue": "a", "channel": "b"}, "at most one"),
        ({**Q, "team": "x"}, "unknown parameter"),
        ({"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "at most"),
    ],
)
def test_bad_queries_say_why(params: dict[str, str], message: str) -> None:
    result = fcr_query(params)
    assert isinstance(result, str)
    assert message in result


def test_partition_of_matches_kafkas_default_partitioner() -> None:
    # aiokafka's DefaultPartitioner is the Java client's murmur2 partitioner.
    from aiokafka.partitioner import DefaultPartitioner

    partitioner = DefaultPartitioner()
    for key in ("cust-1", "cust-000042", "12345", "ab-990801-AA0204-43678"):
        assert partition_of(key, 6) == partitioner(key.encode(), list(range(6)), list(range(6)))
