"""Event time of one input partition, tracked the way Kafka Streams tracks stream time.

A partition number spans the three input topics. For each topic the clock keeps the newest
event time seen. The watermark is the newest time over all topics, held back by every topic
whose partition still has a backlog (consumer lag), so that a topic read faster than another
cannot close windows early or make the other's events look late. It never goes back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def advance(
    watermark: float | None,
    newest_by_topic: Mapping[str, float],
    lagging_topics: Iterable[str],
) -> float | None:
    """The new watermark. A lagging topic not read yet holds it where it is."""
    if not newest_by_topic:
        return watermark
    candidate = max(newest_by_topic.values())
    for topic in lagging_topics:
        seen = newest_by_topic.get(topic)
        if seen is None:
            return watermark
        candidate = min(candidate, seen)
    if watermark is None:
        return candidate
    return max(watermark, candidate)
