"""What surveys say against what customers do (docs/metrics-definitions.md, Survey truth).

From summed hour counters of one dimension: the average CES; the survey-behaviour gap (of the
contacts whose latest survey answer said resolved, the share a later contact repeated; of those
whose answer said not resolved, the share no contact repeated); CSAT and NPS of resolved and of
unresolved contacts. A repeat can come until a contact's repeat window closes, so the gap and
the figures by resolution are final only for windows that ended one repeat window ago.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.domain.kpis import ratio

# The counter fields the figures need (counters.FIELDS).
FIELDS = ("ces_sum", "ces_count", "said_resolved", "said_resolved_repeated", "said_unresolved",
          "said_unresolved_repeated", "csat_sum_resolved", "csat_count_resolved",
          "csat_sum_unresolved", "csat_count_unresolved", "nps_promoters_resolved",
          "nps_detractors_resolved", "nps_count_resolved", "nps_promoters_unresolved",
          "nps_detractors_unresolved", "nps_count_unresolved")
GAP_MEASURES = ("said_resolved_repeated", "said_unresolved_not_repeated")
RESOLUTIONS = ("resolved", "unresolved")


def ces(c: Mapping[str, int]) -> float | None:
    """Average CES (1-7, lower is easier) of the surveys joined to the contacts."""
    return ratio(c.get("ces_sum", 0), c.get("ces_count", 0))


def nps(promoters: int, detractors: int, count: int) -> float | None:
    return None if count <= 0 else 100 * (promoters - detractors) / count


def gap(c: Mapping[str, int]) -> dict[str, float | None]:
    """The survey-behaviour gap: said resolved but repeated; said unresolved, not repeated."""
    said_yes, said_no = c.get("said_resolved", 0), c.get("said_unresolved", 0)
    return {
        "said_resolved_repeated": ratio(c.get("said_resolved_repeated", 0), said_yes),
        "said_unresolved_not_repeated": ratio(
            said_no - c.get("said_unresolved_repeated", 0), said_no),
    }


def by_resolution(c: Mapping[str, int]) -> dict[str, dict[str, float | None]]:
    """CSAT and NPS of the resolved and of the unresolved contacts."""
    out = {}
    for r in RESOLUTIONS:
        out[r] = {
            "csat": ratio(c.get(f"csat_sum_{r}", 0), c.get(f"csat_count_{r}", 0)),
            "nps": nps(c.get(f"nps_promoters_{r}", 0), c.get(f"nps_detractors_{r}", 0),
                       c.get(f"nps_count_{r}", 0)),
        }
    return out


def answer(c: Mapping[str, int]) -> dict[str, Any]:
    """The API's figures of one dimension over a range, with the counts behind them."""
    said_yes, said_no = c.get("said_resolved", 0), c.get("said_unresolved", 0)
    figures = by_resolution(c)
    return {
        "ces": ces(c), "ces_answers": c.get("ces_count", 0),
        "survey_gap": {
            "said_resolved": said_yes,
            "said_resolved_repeated": c.get("said_resolved_repeated", 0),
            "said_unresolved": said_no,
            "said_unresolved_not_repeated": said_no - c.get("said_unresolved_repeated", 0),
            **{f"{k}_share": v for k, v in gap(c).items()},
        },
        "by_resolution": {
            r: {**figures[r], "csat_answers": c.get(f"csat_count_{r}", 0),
                "nps_answers": c.get(f"nps_count_{r}", 0)} for r in RESOLUTIONS},
    }
