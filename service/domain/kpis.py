"""Contact-centre KPIs from summed hour-bucket counters (see docs/metrics-definitions.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from service.domain.counters import HOUR
from service.domain.storage_names import split_counter_field


def ratio(numerator: int, denominator: int) -> float | None:
    return None if denominator <= 0 else numerator / denominator


def kpis(c: Mapping[str, int]) -> dict[str, float | None]:
    """KPIs of one dimension over a range, from its summed counters; None when undefined."""
    get = c.get
    fcr_total = get("fcr_total", 0)
    return {
        "contacts": float(get("contacts", 0)),
        "identified": ratio(get("identified", 0), get("contacts", 0)),
        "fcr_provisional": (None if fcr_total <= 0
                            else 1 - get("unresolved", 0) / fcr_total),
        "repeat": ratio(get("repeats", 0), fcr_total),
        "transfer": ratio(get("transferred", 0), get("handled", 0)),
        "abandon": ratio(get("abandoned", 0), get("contacts", 0)),
        "csat": ratio(get("csat_sum", 0), get("csat_count", 0)),
        "nps": (None if get("nps_count", 0) <= 0 else
                100 * (get("nps_promoters", 0) - get("nps_detractors", 0)) / get("nps_count", 0)),
    }


def trailing_hours(watermark: float, seconds: float) -> list[int]:
    """Hour buckets of the trailing window ending at the watermark (its hour included)."""
    last = int(watermark // HOUR) * HOUR
    count = max(1, int(seconds // HOUR))
    return [last - i * HOUR for i in range(count)]


def sum_by_dimension(buckets: Iterable[Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Hash fields `<dimension>|<name>` of many buckets, summed per dimension."""
    out: dict[str, dict[str, int]] = {}
    for bucket in buckets:
        for field, n in bucket.items():
            dimension, name = split_counter_field(field)
            counts = out.setdefault(dimension, {})
            counts[name] = counts.get(name, 0) + n
    return out
