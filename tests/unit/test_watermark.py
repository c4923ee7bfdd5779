from __future__ import annotations

import pytest

from service.domain.watermark import advance


@pytest.mark.parametrize(
    ("watermark", "newest", "lagging", "expected"),
    [
        pytest.param(None, {}, [], None, id="nothing seen"),
        pytest.param(None, {"ce": 100.0, "tr": 40.0}, [], 100.0, id="caught up: the newest"),
        pytest.param(None, {"ce": 100.0, "tr": 40.0}, ["tr"], 40.0,
                     id="a topic with a backlog holds it back"),
        pytest.param(None, {"ce": 100.0}, ["tr"], None,
                     id="a lagging topic not read yet: no watermark"),
        pytest.param(70.0, {"ce": 100.0}, ["tr"], 70.0,
                     id="a lagging topic not read yet keeps the old one"),
        pytest.param(90.0, {"ce": 100.0, "tr": 40.0}, ["tr"], 90.0, id="never goes back"),
        pytest.param(90.0, {"ce": 100.0, "tr": 95.0, "sv": 120.0}, ["ce", "tr"], 95.0,
                     id="the slowest lagging topic"),
    ],
)
def test_advance(watermark: float | None, newest: dict[str, float], lagging: list[str],
                 expected: float | None) -> None:
    assert advance(watermark, newest, lagging) == expected
