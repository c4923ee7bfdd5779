"""JMESPath functions a mapping file can use besides the standard ones.

- `pairs(array)`: each element with the next one, `[[a, b], [b, c], ...]`: a conversation's
  consecutive agents, each pair a transfer.
- `seconds_between(start, end)`: the seconds from one RFC 3339 / ISO 8601 timestamp to
  another (null when either is missing or unreadable).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import jmespath
from jmespath import functions


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class MappingFunctions(functions.Functions):  # type: ignore[misc]
    @functions.signature({"types": ["array"]})  # type: ignore[untyped-decorator]
    def _func_pairs(self, items: list[Any]) -> list[list[Any]]:
        return [[a, b] for a, b in itertools.pairwise(items)]

    @functions.signature({"types": ["string", "null"]},  # type: ignore[untyped-decorator]
                         {"types": ["string", "null"]})
    def _func_seconds_between(self, start: str | None, end: str | None) -> float | None:
        a, b = _moment(start), _moment(end)
        if a is None or b is None:
            return None
        return (b - a).total_seconds()


OPTIONS = jmespath.Options(custom_functions=MappingFunctions())
