"""The gauges of repeat drivers and costs, from one window's counters summed per dimension."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from service.adapters.drivers_gauges import DriverGauges
from service.domain.costs import ContactCosts


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted((k, v) for k, v in s.labels.items() if k != "policy_version")): s.value
            for metric in registry.collect() for s in metric.samples if s.name == name}


RECENT = {"24h": {
    "all": {"cost": 70_300, "repeat_cost": 19_500, "settled_cost": 65_000, "resolved": 6,
            "unresolved": 4},
    "queue:billing": {"unresolved": 4, "cost": 70_300},
    "reason:card": {"unresolved": 3}, "reason:loan": {"unresolved": 1},
    "reason:info": {"unresolved": 0},
    "flow:a%3Eb>transfer": {"unresolved": 1},
    "queue_reason:billing>card": {"unresolved": 3},  # not a gauge of its own
}}


def test_top_drivers_per_window_and_the_rest_in_other() -> None:
    registry = CollectorRegistry()
    gauges = DriverGauges(registry, None, 0.8, top=1)
    gauges.update(RECENT, "1")
    got = samples(registry, "cx_repeat_driver_unresolved")
    assert got == {
        (("by", "reason"), ("driver", "card"), ("window", "24h")): 3,
        (("by", "reason"), ("driver", "other"), ("window", "24h")): 1,
        (("by", "queue"), ("driver", "billing"), ("window", "24h")): 4,
        (("by", "origin_queue>repeat_queue"), ("driver", "a>b>transfer"), ("window", "24h")): 1,
    }
    assert samples(registry, "cx_contact_cost") == {}  # no costs configured: no series


def test_cost_gauges_per_dimension() -> None:
    registry = CollectorRegistry()
    gauges = DriverGauges(registry, ContactCosts("USD", {"voice": 6500}), 0.8)
    gauges.update(RECENT, "1")
    centre = (("agent", ""), ("channel", ""), ("currency", "USD"), ("queue", ""),
              ("segment", ""), ("window", "24h"))
    billing = tuple(("queue", "billing") if k == "queue" else (k, v) for k, v in centre)
    assert samples(registry, "cx_contact_cost") == {centre: 70.3, billing: 70.3}
    assert samples(registry, "cx_repeat_cost") == {centre: 19.5, billing: 0.0}
    assert samples(registry, "cx_cost_per_resolution") == {centre: 10.833}
    assert samples(registry, "cx_avoidable_cost") == {centre: 16.25, billing: 0.0}
    gauges.update({}, "1")  # a refresh without windows clears them
    assert samples(registry, "cx_contact_cost") == {}
