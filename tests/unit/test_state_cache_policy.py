"""Which states the worker keeps in memory between batches (no server needed)."""

from __future__ import annotations

import time

from service.domain.records import CustomerState
from service.service_layer.state_cache import StateCache


def test_unidentified_callers_states_are_not_kept() -> None:
    cache = StateCache(max_bytes=10_000_000, state_ttl=3600.0)
    states: dict[str, CustomerState | None] = {
        "c:cust-1": CustomerState(customer_id="cust-1"),
        "u:contact-9": CustomerState(customer_id=None),
    }
    sizes = {"c:cust-1": 100, "u:contact-9": 100}
    cache.committed(0, "1", states, sizes, written_at=time.monotonic())
    assert len(cache) == 1
    assert set(cache.take(0, ["c:cust-1", "u:contact-9"])) == {"c:cust-1"}
