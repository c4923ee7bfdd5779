"""The rules an operator sets: repeat window and scope, what breaks FCR, lateness, perception.

Defaults apply to every queue; `QueuePolicy` overrides may change them per queue. A contact's
own queue decides its window and scope: contact c is a repeat of p, and p is unresolved
because of c, when c falls within *p's* window and scope, so the two always agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    repeat_window: float = 7 * DAY
    transfer_breaks_fcr: bool = True
    repeat_same_reason: bool = False
    repeat_same_channel: bool = False


@dataclass(frozen=True, slots=True)
class PerceptionPolicy:
    """Parameters of the perception curve (docs/perception.md explains each)."""

    baseline: float = 70.0
    segment_baselines: Mapping[str, float] = field(default_factory=dict)
    half_life: float = 14 * DAY
    wait_target: float = 60.0
    at_risk_below: float = 40.0
    at_risk_recover_at: float = 50.0
    at_risk_drop: float = 25.0
    at_risk_drop_period: float = 7 * DAY
    curve_points: int = 20
    # Customer value: the value per month of a customer none of whose contacts carried
    # `customer_value`, per segment (CX_SEGMENT_VALUES; "*" for any other), else 0.
    segment_values: Mapping[str, float] = field(default_factory=dict)
    # A complaint heard by speech or text analytics puts the customer at risk by itself.
    at_risk_on_complaint: bool = True

    def value_for(self, segment: str | None) -> float:
        values = self.segment_values
        if segment is not None and segment in values:
            return values[segment]
        return values.get("*", 0.0)

    def baseline_for(self, segment: str | None) -> float:
        if segment is not None and segment in self.segment_baselines:
            return self.segment_baselines[segment]
        return self.baseline


@dataclass(frozen=True, slots=True)
class Policy:
    default: QueuePolicy = QueuePolicy()
    per_queue: Mapping[str, QueuePolicy] = field(default_factory=dict)
    allowed_lateness: float = 7 * DAY
    perception: PerceptionPolicy = PerceptionPolicy()
    version: str = "1"
    # Derived once: the engine asks for it several times per settle.
    _max_window: float = field(init=False, repr=False, compare=False, default=0.0)

    def __post_init__(self) -> None:
        windows = [q.repeat_window for q in self.per_queue.values()]
        object.__setattr__(self, "_max_window", max([self.default.repeat_window, *windows]))

    def for_queue(self, queue: str) -> QueuePolicy:
        return self.per_queue.get(queue, self.default)

    @property
    def max_window(self) -> float:
        return self._max_window

    @property
    def join_horizon(self) -> float:
        """A transfer or survey joins a contact at most this far from it in event time."""
        return self.max_window + self.allowed_lateness
