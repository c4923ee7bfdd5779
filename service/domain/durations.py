"""Durations written the way operators write them: `72h`, `7d`, `30m`, `500ms`, `90s`, `1.5`."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds in `text`; a bare number is seconds. Raises ValueError on anything else."""
    match = _DURATION_RE.match(text)
    if match is None:
        raise ValueError(f"expected a duration such as 90s, 30m, 72h or 7d, got {text!r}")
    number, unit = match.groups()
    return float(number) * _UNITS[unit or "s"]
