"""Gauges of repeat drivers and costs (docs/metrics.md, "Repeat drivers and costs"), computed
by each refresh of the business gauges from the same summed counters of each window."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Gauge

from service.domain.costs import ContactCosts, cost_figures
from service.domain.counters import driver_name
from service.domain.drivers import DriverCounts, pareto

TOP_DRIVERS = 10  # driver series per window and `by`
LABELS = ["window", "queue", "channel", "segment", "agent"]
VERSION = "policy_version"
# The kinds of the Pareto gauge: `by` label -> counter dimension kind.
_BY = {"reason": "reason", "queue": "queue", "origin_queue>repeat_queue": "flow"}
_COSTS = {
    # figure: (metric name, help)
    "contact_cost": ("cx_contact_cost",
                     "Cost of the handled contacts of the trailing window (CX_CONTACT_COSTS)."),
    "repeat_cost": ("cx_repeat_cost",
                    "Cost of the handled contacts of the window that are repeats."),
    "cost_per_resolution": ("cx_cost_per_resolution",
                            "Cost of the window's resolved and unresolved contacts per "
                            "resolved contact (resolved issue)."),
    "avoidable_cost": ("cx_avoidable_cost",
                       "What the window's resolved and unresolved contacts cost above what "
                       "the same resolved issues would cost at CX_FCR_TARGET."),
}


class DriverGauges:
    """The top repeat drivers per window, and the cost gauges when costs are configured."""

    def __init__(self, registry: CollectorRegistry, costs: ContactCosts | None,
                 fcr_target: float, top: int = TOP_DRIVERS) -> None:
        self._costs = costs
        self._target = fcr_target
        self._top = top
        self.drivers = Gauge(
            "cx_repeat_driver_unresolved",
            "Unresolved contacts of the trailing window per repeat driver: the top drivers "
            "`by` reason, queue or origin_queue>repeat_queue (`driver`), the rest summed in "
            "`driver=\"other\"`.", ["window", "by", "driver", VERSION], registry=registry)
        self.cost = {k: Gauge(name, doc, [*LABELS, "currency", VERSION], registry=registry)
                     for k, (name, doc) in _COSTS.items()} if costs is not None else {}

    def update(self, recent: Mapping[str, Mapping[str, Mapping[str, int]]],
               version: str) -> None:
        """Set the gauges from each window's counters summed per dimension (no await)."""
        self.drivers.clear()
        for gauge in self.cost.values():
            gauge.clear()
        for window, by_dimension in recent.items():
            for by, kind in _BY.items():
                rows: dict[str, DriverCounts] = {}
                prefix = f"{kind}:"
                for dimension, counts in by_dimension.items():
                    if dimension.startswith(prefix) and counts.get("unresolved", 0) > 0:
                        label = dimension[len(prefix):]
                        if kind == "flow":
                            origin, _, led = label.partition(">")
                            label = f"{driver_name(origin)}>{driver_name(led)}"
                        rows[label] = DriverCounts(counts["unresolved"])
                for row in pareto(rows, self._top):
                    self.drivers.labels(window, by, row.driver, version).set(
                        row.counts.unresolved)
            if self._costs is None:
                continue
            for dimension, counts in by_dimension.items():
                kind, _, value = dimension.partition(":")
                if dimension != "all" and kind not in LABELS:
                    continue
                labels = dict.fromkeys(LABELS, "")
                labels["window"] = window
                if dimension != "all":
                    labels[kind] = value
                for figure, amount in cost_figures(counts, self._target).items():
                    if figure in self.cost and amount is not None:
                        self.cost[figure].labels(**labels, currency=self._costs.currency,
                                                 policy_version=version).set(amount)
