"""Early warning from speech and text analytics: complaint rate and average sentiment from
summed hour counters of one dimension (docs/metrics-definitions.md, Speech analytics)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.domain.kpis import ratio

FIELDS = ("voice_complaint_known", "voice_complaints", "voice_sentiment_count",
          "voice_sentiment_milli")


def complaint_rate(c: Mapping[str, int]) -> float | None:
    """Contacts in which a complaint was heard / contacts analysed for complaints."""
    return ratio(c.get("voice_complaints", 0), c.get("voice_complaint_known", 0))


def sentiment_average(c: Mapping[str, int]) -> float | None:
    """Average sentiment (-1 to 1) of the contacts that carried one."""
    n = c.get("voice_sentiment_count", 0)
    return None if n <= 0 else c.get("voice_sentiment_milli", 0) / 1000 / n


def answer(c: Mapping[str, int]) -> dict[str, Any]:
    """The API's figures, with the counts behind them."""
    return {"complaint_rate": complaint_rate(c), "complaints": c.get("voice_complaints", 0),
            "analysed_for_complaints": c.get("voice_complaint_known", 0),
            "sentiment": sentiment_average(c),
            "sentiment_answers": c.get("voice_sentiment_count", 0)}
