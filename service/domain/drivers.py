"""Repeat drivers: where first contact resolution is lost, as a Pareto of unresolved contacts.

An unresolved contact is counted once under its own reason, queue and agent, and once under the
flow from its queue to what it led to: the queue of the contact that repeated it, or
`transfer` / `survey_unresolved` when that is why it failed (counters.py). A Pareto sorts the
rows of one kind by unresolved contacts, with each row's share of the rows' total and the
cumulative share; rows past the limit, and the names without counters of their own (`other`),
are summed into one last row `other`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from service.domain.cardinality import OTHER

BY = ("reason", "queue", "agent", "origin_queue>repeat_queue")
MAX_LIMIT = 200
DEFAULT_LIMIT = 20


@dataclass(frozen=True, slots=True)
class DriverCounts:
    """One row's sums over a range: unresolved contacts, the FCR population (fcr_total, as
    `/api/v1/fcr`'s total), resolved contacts, and the price of the repeats (thousandths)."""

    unresolved: int = 0
    fcr_total: int = 0
    resolved: int = 0
    led_cost: int = 0

    def plus(self, other: DriverCounts) -> DriverCounts:
        return DriverCounts(self.unresolved + other.unresolved, self.fcr_total + other.fcr_total,
                            self.resolved + other.resolved, self.led_cost + other.led_cost)

    @property
    def fcr(self) -> float | None:
        """1 - unresolved / FCR population, as /api/v1/fcr; None without a population."""
        return None if self.fcr_total <= 0 else 1 - self.unresolved / self.fcr_total


@dataclass(frozen=True, slots=True)
class ParetoRow:
    driver: str
    counts: DriverCounts
    share: float
    cumulative_share: float
    drivers: int  # names summed in this row (1, or more in the last row `other`)


def pareto(rows: Mapping[str, DriverCounts], limit: int = DEFAULT_LIMIT) -> list[ParetoRow]:
    """Rows with unresolved contacts, sorted by them (descending, ties by name), at most
    `limit` of their own; the rest and `other` summed into a last row `other`."""
    ranked = sorted(((name, c) for name, c in rows.items()
                     if c.unresolved > 0 and name != OTHER),
                    key=lambda item: (-item[1].unresolved, item[0]))
    kept, rest = ranked[:limit], ranked[limit:]
    tail = DriverCounts()
    summed = 0
    for _, c in rest:
        tail = tail.plus(c)
        summed += 1
    folded = rows.get(OTHER)
    if folded is not None and folded.unresolved > 0:
        tail = tail.plus(folded)
        summed += 1
    total = sum(c.unresolved for _, c in kept) + tail.unresolved
    out: list[ParetoRow] = []
    running = 0
    for name, c in kept:
        running += c.unresolved
        out.append(ParetoRow(name, c, c.unresolved / total, running / total, 1))
    if summed:
        out.append(ParetoRow(OTHER, tail, tail.unresolved / total, 1.0, summed))
    return out


def driver_kind(by: str, queue: str | None) -> str:
    """The counter dimension kind a Pareto `by` reads (`reason`, `queue_reason`, ...)."""
    if by == "origin_queue>repeat_queue":
        return "flow"
    if queue is not None and by in ("reason", "agent"):
        return f"queue_{by}"
    return by
