"""Business gauges, recomputed from the Redis counters every CX_METRICS_REFRESH.

They describe the whole service (all partitions), so every worker exports the same values:
aggregate them across instances with `max`, never `sum` (docs/metrics.md). They are computed
from the policy version the service serves (label `policy_version`), read at each refresh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram

from service.adapters.drivers_gauges import DriverGauges
from service.adapters.redis_state import RedisState
from service.adapters.survey_gauges import SurveyTruthGauges
from service.domain.cardinality import Cap, LabelCaps, fold_dimensions, totals_by_value
from service.domain.containment import containment_kpis
from service.domain.engine import rfc3339
from service.domain.kpis import kpis, sum_by_dimension, trailing_hours
from service.domain.partition import PartitionClock, clock_summary
from service.domain.policy import Policy
from service.domain.storage_names import QUEUE_AGENT

HOURS_PER_READ = 24
LABELS = ["window", "queue", "channel", "segment", "agent"]
VERSION = "policy_version"
_GAUGES = {
    # kpi name: (metric name, help)
    "contacts": ("cx_window_contacts", "Contacts (all outcomes) in the trailing window."),
    "fcr_provisional": ("cx_fcr_provisional_ratio",
                        "1 - unresolved / handled contacts of identified customers, in the "
                        "trailing window; pending contacts count as not failed so far."),
    "fcr_final": ("cx_fcr_final_ratio",
                  "FCR of a window as long as `window` ending one repeat window before the "
                  "watermark: every contact in it has a closed window."),
    "repeat": ("cx_repeat_contact_ratio", "Repeats / handled contacts of identified customers."),
    "transfer": ("cx_transfer_ratio", "Transferred / handled contacts."),
    "abandon": ("cx_abandon_ratio", "Abandoned / all contacts."),
    "csat": ("cx_csat_average", "Average CSAT (1-5) of surveys joined to the window's contacts."),
    "nps": ("cx_nps", "NPS (-100 to 100) of surveys joined to the window's contacts."),
    # Containment (domain/containment)
    "failed_containment": ("cx_failed_containment_ratio",
                           "Self-service contacts of identified customers followed by a handled "
                           "contact within the repeat window / those self-service contacts."),
    "abandon_callback": ("cx_abandon_callback_ratio",
                         "Abandoned contacts of identified customers followed by any contact "
                         "within the repeat window / those abandoned contacts."),
}


def _gauged(dimension: str) -> bool:
    """Whether a counter dimension has series in the gauges above (not reason or drivers)."""
    return dimension == "all" or dimension.partition(":")[0] in LABELS


def _labels(window: str, dimension: str) -> dict[str, str]:
    labels = dict.fromkeys(LABELS, "")
    labels["window"] = window
    if dimension != "all":
        kind, _, value = dimension.partition(":")
        labels[kind] = value
    return labels


class BusinessMetrics:
    def __init__(self, registry: CollectorRegistry, *, windows: tuple[tuple[str, float], ...],
                 agent_labels: int, policy: Policy, fcr_target: float = 0.7,
                 caps: LabelCaps | None = None, drivers: DriverGauges | None = None) -> None:
        self._windows = windows
        self.drivers = drivers  # repeat drivers and costs, from the same counters
        self._fcr_target = fcr_target
        self.wallboard: dict[str, Any] = {"watermark": None, "centre": {}, "queues": [],
                                          "fcr_target": fcr_target, "window": ""}
        self._agent_labels = agent_labels
        # The caps the worker counts under (shared with its pipeline: the busiest names found
        # here are the ones it keeps), and the agents given series of their own in the gauges.
        self.caps = caps or LabelCaps(500, 100, 5000)
        self._agent_series = Cap("agent", agent_labels)
        self._policy = policy
        self.gauges = {k: Gauge(name, doc, [*LABELS, VERSION], registry=registry)
                       for k, (name, doc) in _GAUGES.items()}
        self.at_risk = Gauge("cx_customers_at_risk", "Customers currently at risk.", [VERSION],
                             registry=registry)
        self.noisy = Gauge(
            "cx_noisy_customers",
            "Data quality: customers with more contacts in their window than "
            "CX_MAX_CONTACTS_PER_CUSTOMER (a placeholder id, a test line, a bot), whose further "
            "contacts are counted as unidentified.", [VERSION], registry=registry)
        self.perception = Gauge(
            "cx_perception_customers",
            "Customers by perception score band (`band` 0-10, 10-20, ... 90-100), as of each "
            "customer's last change.", ["band", VERSION], registry=registry)
        self.quality = Gauge(
            "cx_data_quality_ratio",
            "Data quality: `identified_contacts` (contacts with a customer_id, in the window), "
            "`surveys_joined` and `transfers_joined` (joined to a contact, since the start).",
            ["measure", "window", VERSION], registry=registry)
        self.policy_version = Gauge(
            "cx_policy_version",
            "Policy versions: `role=\"serving\"` the one the API, gauges and wallboard serve, "
            "`role=\"writing\"` the one this worker writes (CX_POLICY_VERSION).", ["role"],
            registry=registry)
        self.watermark = Gauge("cx_watermark_timestamp_seconds",
                               "The service's watermark: the slowest partition's newest event "
                               "time (seconds since the epoch).", registry=registry)
        self.partition_watermark = Gauge(
            "cx_partition_watermark_timestamp_seconds",
            "Each input partition's watermark (seconds since the epoch).", ["partition"],
            registry=registry)
        self.folded = Gauge(
            "cx_label_values_folded",
            "Distinct queue, segment, agent, reason or topic names (`dimension`) without "
            "counters and series of their own, counted under `other` (CX_MAX_QUEUES, "
            "CX_MAX_SEGMENTS, CX_MAX_AGENTS, CX_MAX_REASONS, CX_MAX_TOPICS): seen by this "
            "worker since it started, or in the gauges' windows.",
            ["dimension"], registry=registry)
        for cap in self.caps.all():
            self.folded.labels(cap.dimension).set(0)
        # Customer value (domain/value.py)
        self.value_at_risk = Gauge(
            "cx_value_at_risk",
            "Summed value per month of the customers currently at risk, per segment (`none`: "
            "no segment known), in the centre's currency.", ["segment", VERSION],
            registry=registry)
        self.survey_truth = SurveyTruthGauges(registry, LABELS, VERSION)
        self.refresh_seconds = Histogram(
            "cx_metrics_refresh_seconds", "Time to recompute the business gauges from Redis.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=registry)

    async def refresh(self, state: RedisState, partitions: Callable[[], int],
                      policy: Policy | None = None) -> None:
        """Recompute from `state`, computed under `policy` (default: the worker's own)."""
        started = time.perf_counter()
        policy = policy or self._policy
        version = policy.version
        n = partitions()
        clocks = await state.read_clocks(n)
        watermark = clock_summary(clocks)
        computed: list[tuple[str, dict[str, str], float]] = []
        if watermark is not None:
            longest = max(seconds for _, seconds in self._windows)
            shift = policy.max_window
            hours = set(trailing_hours(watermark, longest))
            hours |= set(trailing_hours(watermark - shift, longest))
            # A day of hours per pipeline: redis-py parses a pipeline's replies in one go,
            # so 14 days in one pipeline held the event loop (and every batch) for the whole
            # parse. Between the pieces and the windows, batches and lookups get their turn.
            raw: dict[int, list[dict[str, int]]] = {}
            ordered = sorted(hours)
            for i in range(0, len(ordered), HOURS_PER_READ):
                raw.update(await state.read_buckets_by_hour(n, ordered[i:i + HOURS_PER_READ]))
            kept = self._rank(raw.values())
            recents: dict[str, dict[str, dict[str, int]]] = {}
            for name, seconds in self._windows:
                await asyncio.sleep(0)
                recent = fold_dimensions(
                    sum_by_dimension(b for h in trailing_hours(watermark, seconds)
                                     for b in raw.get(h, [])), kept)
                closed = fold_dimensions(
                    sum_by_dimension(b for h in trailing_hours(watermark - shift, seconds)
                                     for b in raw.get(h, [])), kept)
                recents[name] = recent
                for dimension, counts in recent.items():
                    if not _gauged(dimension):
                        continue
                    labels = _labels(name, dimension)
                    for kpi, value in {**kpis(counts), **containment_kpis(counts)}.items():
                        if value is not None:
                            computed.append((kpi, labels, value))
                self.survey_truth.add(name, {d: c for d, c in recent.items() if _gauged(d)},
                                      closed, _labels, version)
                self.survey_truth.add_topics(name, recent, version)
                for dimension, counts in closed.items():
                    if not _gauged(dimension):
                        continue
                    value = kpis(counts)["fcr_provisional"]
                    if value is not None:
                        computed.append(("fcr_final", _labels(name, dimension), value))
            if self.drivers is not None:
                self.drivers.update(recents, version)
        self.wallboard = self._wallboard(computed, clocks, watermark)
        self.wallboard["policy_version"] = version
        # No await below: a scrape never sees the gauges half updated.
        for gauge in self.gauges.values():
            gauge.clear()
        for kpi, labels, value in computed:
            if kpi in self.gauges:
                self.gauges[kpi].labels(**labels, policy_version=version).set(value)
        self.at_risk.clear()
        self.at_risk.labels(version).set(sum(c.at_risk for c in clocks.values()))
        self.noisy.clear()
        self.noisy.labels(version).set(sum(c.noisy for c in clocks.values()))
        self.quality.clear()
        for kpi, labels, value in computed:
            if kpi == "identified" and not any(labels[k] for k in LABELS[1:]):
                self.quality.labels("identified_contacts", labels["window"], version).set(value)
        for what in ("surveys", "transfers"):
            held = sum(c.joins.get(what, 0) for c in clocks.values())
            if held > 0:
                joined = sum(c.joins.get(f"{what}_joined", 0) for c in clocks.values())
                self.quality.labels(f"{what}_joined", "", version).set(joined / held)
        self._value_at_risk(clocks, version)
        self.survey_truth.publish()
        self.perception.clear()
        for band in range(10):
            self.perception.labels(f"{band * 10}-{band * 10 + 10}", version).set(
                sum(c.bands.get(band, 0) for c in clocks.values()))
        for cap in self.caps.all():
            self.folded.labels(cap.dimension).set(len(cap.folded))
        self.policy_version.labels("serving").set(int(version))
        if watermark is not None:
            self.watermark.set(watermark)
        for partition, clock in clocks.items():
            if clock.watermark is not None:
                self.partition_watermark.labels(str(partition)).set(clock.watermark)
        self.refresh_seconds.observe(time.perf_counter() - started)

    def _wallboard(self, computed: list[tuple[str, dict[str, str], float]],
                   clocks: dict[int, PartitionClock], watermark: float | None) -> dict[str, Any]:
        """What /api/v1/wallboard serves: the centre's tiles and one tile per queue."""
        names = [name for name, _ in self._windows]
        wide = "24h" if "24h" in names else names[-1]
        short = "1h" if "1h" in names else names[0]
        centre: dict[str, Any] = {}
        queues: dict[str, dict[str, Any]] = {}
        for kpi, labels, value in computed:
            if labels["channel"] or labels["segment"] or labels["agent"]:
                continue
            if labels["window"] == wide and kpi != "contacts":
                key = kpi
            elif labels["window"] == short and kpi == "contacts":
                key = "contacts_last_hour"
            else:
                continue
            target = queues.setdefault(labels["queue"], {}) if labels["queue"] else centre
            target[key] = value
        return {
            "watermark": None if watermark is None else rfc3339(watermark),
            "window": wide,
            "fcr_target": self._fcr_target,
            "centre": {**centre, "customers_at_risk": sum(c.at_risk for c in clocks.values()),
                       "value_at_risk": sum(sum(c.value_at_risk.values())
                                            for c in clocks.values()) / 100},
            "queues": [{"queue": q, **tiles} for q, tiles in sorted(queues.items())],
        }

    def _rank(self, buckets: Iterable[list[dict[str, int]]]) -> dict[str, Cap | None]:
        """The names of each capped dimension that keep series of their own: the busiest by
        contacts in the hours read. The pipeline's caps keep the same queues and segments from
        now on (and agents up to CX_MAX_AGENTS); the gauges show the CX_METRICS_AGENT_LABELS
        busiest agents (none when 0)."""
        read = [bucket for per_hour in buckets for bucket in per_hour]
        caps = self.caps
        agents = totals_by_value(read, "agent")
        for cap in caps.all():
            cap.rank(agents if cap is caps.agent else totals_by_value(read, cap.dimension))
        self._agent_series.rank({a: n for a, n in agents.items() if a in caps.agent.kept})
        return {"queue": caps.queue, "segment": caps.segment, "reason": caps.reason,
                "topic": caps.topic,
                "agent": self._agent_series if self._agent_labels > 0 else None,
                # every counter per (queue, agent): read through /api/v1/agents only
                QUEUE_AGENT: None}

    # -- customer value ----------------------------------------------------------------------

    def _value_at_risk(self, clocks: dict[int, PartitionClock], version: str) -> None:
        """cx_value_at_risk per segment: the partitions' counts in cents, summed."""
        cents: dict[str, int] = {}
        for clock in clocks.values():
            for segment, n in clock.value_at_risk.items():
                cents[segment] = cents.get(segment, 0) + n
        self.value_at_risk.clear()
        for segment, n in sorted(cents.items()):
            self.value_at_risk.labels(segment, version).set(n / 100)
