from __future__ import annotations

import pytest

from service.domain.kpis import kpis, sum_by_dimension, trailing_hours


def test_kpis_of_a_dimension() -> None:
    got = kpis({"contacts": 10, "identified": 8, "abandoned": 2, "handled": 8, "fcr_total": 5,
                "unresolved": 1, "repeats": 1, "transferred": 2, "csat_sum": 9, "csat_count": 2,
                "nps_promoters": 3, "nps_detractors": 1, "nps_count": 4})
    assert got == {"contacts": 10.0, "identified": 0.8, "fcr_provisional": 0.8, "repeat": 0.2,
                   "transfer": 0.25, "abandon": 0.2, "csat": 4.5, "nps": 50.0}


def test_undefined_kpis_are_none_not_zero() -> None:
    got = kpis({"contacts": 3, "abandoned": 3})
    assert got["fcr_provisional"] is None
    assert got["csat"] is None
    assert got["abandon"] == 1.0


def test_trailing_hours_end_at_the_watermarks_hour() -> None:
    assert trailing_hours(7200 + 1800, 3 * 3600) == [7200, 3600, 0]
    assert trailing_hours(7200, 3600) == [7200]


def test_sum_by_dimension_keeps_dimensions_with_bars_apart() -> None:
    got = sum_by_dimension([{"queue:a|b|contacts": 1, "all|contacts": 1},
                            {"queue:a|b|contacts": 2}])
    assert got == {"queue:a|b": {"contacts": 3}, "all": {"contacts": 1}}


@pytest.mark.parametrize("text", ["", "90m", "soon"])
def test_bad_metric_windows(text: str) -> None:
    from service.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match=r"^CX_METRICS_WINDOWS"):
        load_settings({"CX_METRICS_WINDOWS": text})
