"""Hour-bucket counters: what one contact adds to the counts of its hour, per dimension.

Each contact is counted in the hour bucket of its `occurred_at`, under every dimension it has:
`all`, `queue:<q>`, `channel:<c>`, `agent:<a>` (handled contacts) and `segment:<s>` (when
known). When a contact's verdict changes, its old contribution is retracted and the new one
added, so any hour-aligned range sums exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

HOUR = 3600

# Fields of one dimension in one hour bucket.
FIELDS = (
    "contacts", "identified", "abandoned", "self_service", "handled",
    "fcr_total", "unresolved", "resolved", "repeats", "transferred",
    "surveys", "survey_unresolved", "csat_sum", "csat_count",
    "nps_promoters", "nps_detractors", "nps_count", "ces_sum", "ces_count",
)

STATUS_NONE, STATUS_PENDING, STATUS_RESOLVED, STATUS_UNRESOLVED = range(4)


@dataclass(frozen=True, slots=True)
class Counted:
    """Everything a contact's contribution depends on (stored, so it can be retracted)."""

    hour: int
    outcome: str
    queue: str
    channel: str
    agent: str | None
    segment: str | None
    participates: bool
    status: int
    is_repeat: bool
    transferred: bool
    surveys: int
    survey_unresolved: int
    csat_sum: int
    csat_count: int
    nps_promoters: int
    nps_detractors: int
    nps_count: int
    ces_sum: int
    ces_count: int
    identified: bool = False

    def to_tuple(self) -> tuple[Any, ...]:
        return (self.hour, self.outcome, self.queue, self.channel, self.agent, self.segment,
                self.participates, self.status, self.is_repeat, self.transferred, self.surveys,
                self.survey_unresolved, self.csat_sum, self.csat_count, self.nps_promoters,
                self.nps_detractors, self.nps_count, self.ces_sum, self.ces_count,
                self.identified)

    @staticmethod
    def from_tuple(v: tuple[Any, ...]) -> Counted:
        return Counted(*v)


def hour_of(t: float) -> int:
    return int(t // HOUR) * HOUR


def dimensions(c: Counted) -> Iterator[str]:
    yield "all"
    yield f"queue:{c.queue}"
    yield f"channel:{c.channel}"
    if c.agent is not None:
        yield f"agent:{c.agent}"
    if c.segment is not None:
        yield f"segment:{c.segment}"


def values(c: Counted) -> dict[str, int]:
    """The non-zero counts of one contact."""
    v = {
        "contacts": 1,
        "identified": int(c.identified),
        "abandoned": int(c.outcome == "abandoned"),
        "self_service": int(c.outcome == "self_service"),
        "handled": int(c.outcome == "handled"),
        "fcr_total": int(c.participates),
        "unresolved": int(c.status == STATUS_UNRESOLVED),
        "resolved": int(c.status == STATUS_RESOLVED),
        "repeats": int(c.is_repeat),
        "transferred": int(c.transferred),
        "surveys": c.surveys,
        "survey_unresolved": c.survey_unresolved,
        "csat_sum": c.csat_sum,
        "csat_count": c.csat_count,
        "nps_promoters": c.nps_promoters,
        "nps_detractors": c.nps_detractors,
        "nps_count": c.nps_count,
        "ces_sum": c.ces_sum,
        "ces_count": c.ces_count,
    }
    return {k: n for k, n in v.items() if n}


def field_name(dimension: str, name: str) -> str:
    return f"{dimension}|{name}"


_FIELD_NAMES: dict[str, dict[str, str]] = {}  # dimension -> count name -> hash field


def _field_names(dimension: str) -> dict[str, str]:
    names = _FIELD_NAMES.get(dimension)
    if names is None:
        if len(_FIELD_NAMES) > 50_000:  # bounded: agents and queues come and go
            _FIELD_NAMES.clear()
        names = _FIELD_NAMES[dimension] = {n: field_name(dimension, n) for n in FIELDS}
    return names


def contribution(c: Counted, sign: int = 1) -> dict[str, int]:
    """Hash field -> count, for every dimension of the contact."""
    counts = [(name, sign * n) for name, n in values(c).items()]
    out: dict[str, int] = {}
    for dim in dimensions(c):
        names = _field_names(dim)
        for name, n in counts:
            out[names[name]] = n
    return out


def vector(c: Counted) -> tuple[int, ...]:
    """The counts of one contact, in the order of FIELDS."""
    outcome, status = c.outcome, c.status
    return (1, int(c.identified), int(outcome == "abandoned"), int(outcome == "self_service"),
            int(outcome == "handled"), int(c.participates), int(status == STATUS_UNRESOLVED),
            int(status == STATUS_RESOLVED), int(c.is_repeat), int(c.transferred), c.surveys,
            c.survey_unresolved, c.csat_sum, c.csat_count, c.nps_promoters, c.nps_detractors,
            c.nps_count, c.ces_sum, c.ces_count)


_FIELD_ROWS: dict[str, tuple[str, ...]] = {}  # dimension -> hash fields in the order of FIELDS


def _field_row(dimension: str) -> tuple[str, ...]:
    row = _FIELD_ROWS.get(dimension)
    if row is None:
        if len(_FIELD_ROWS) > 50_000:
            _FIELD_ROWS.clear()
        row = _FIELD_ROWS[dimension] = tuple(field_name(dimension, n) for n in FIELDS)
    return row


def _add(bucket: dict[str, int], c: Counted, changes: list[tuple[int, int]]) -> None:
    for dim in dimensions(c):
        row = _field_row(dim)
        for i, n in changes:
            name = row[i]
            total = bucket.get(name, 0) + n
            if total:
                bucket[name] = total
            else:
                del bucket[name]


def add_delta(
    deltas: dict[int, dict[str, int]], old: Counted | None, new: Counted | None
) -> None:
    """Accumulate the change from `old` to `new` into per-hour field deltas."""
    if (old is not None and new is not None and old.hour == new.hour
            and old.queue == new.queue and old.channel == new.channel
            and old.agent == new.agent and old.segment == new.segment):
        # Same bucket and dimensions (a verdict changed): only the counts that differ.
        changes = [(i, b - a) for i, (a, b) in enumerate(zip(vector(old), vector(new),
                                                              strict=True)) if a != b]
        if changes:
            _add(deltas.setdefault(new.hour, {}), new, changes)
    else:
        for counted, sign in ((old, -1), (new, 1)):
            if counted is None:
                continue
            changes = [(i, sign * n) for i, n in enumerate(vector(counted)) if n]
            _add(deltas.setdefault(counted.hour, {}), counted, changes)
    for hour in [h for h, b in deltas.items() if not b]:
        del deltas[hour]
