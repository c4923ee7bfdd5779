"""Bounds on the label values that input controls: queue, segment, agent, reason and topic
names.

Any producer can invent a new queue or segment name with every event. Each name would become
new hash fields in every hour's counters, new Prometheus series and a new wallboard tile, so a
stream of made-up names grows all three without bound. A `Cap` keeps at most `limit` names of
one dimension: those get their own counters and series; any other name is counted under
`OTHER`. Which names are kept: the busiest ones in the counters (`rank`, each time the gauges
are recomputed), and, while there is room, the first ones seen. A contact's counts remember the
name they were added under (counters `Counted`), so they are retracted from the same place even
after the kept names changed.

Channel and outcome are closed enums checked at the door, and need no cap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from service.domain.costs import ContactCosts
from service.domain.counters import Counted

OTHER = "other"
REMEMBERED = 100_000  # folded values remembered per dimension, to count them


class Cap:
    """At most `limit` values of one dimension keep their own series; the rest are `OTHER`.

    A value literally named `other` is always counted under `OTHER`. `limit` 0 keeps none.
    """

    __slots__ = ("dimension", "folded", "kept", "limit")

    def __init__(self, dimension: str, limit: int) -> None:
        self.dimension = dimension
        self.limit = limit
        self.kept: set[str] = set()
        # Hashes of the values counted under OTHER (up to REMEMBERED of them), to count them.
        self.folded: set[int] = set()

    def label(self, value: str) -> str:
        """The label `value` is counted under (kept while there is room)."""
        kept = self.kept
        if value in kept or value == OTHER:
            return value
        if len(kept) < self.limit:
            kept.add(value)
            return value
        self.fold(value)
        return OTHER

    def fold(self, value: str) -> None:
        """Remember that `value` was counted under OTHER."""
        if len(self.folded) < REMEMBERED:
            self.folded.add(hash(value))

    def busiest(self, totals: Mapping[str, int]) -> set[str]:
        """The `limit` values with the largest totals (ties by name), `OTHER` left out."""
        if self.limit <= 0:
            return set()
        ranked = sorted((v for v in totals if v != OTHER), key=lambda v: (-totals[v], v))
        return set(ranked[: self.limit])

    def rank(self, totals: Mapping[str, int]) -> set[str]:
        """Keep the busiest values of `totals` (counts per value, e.g. contacts in the gauges'
        windows) from now on; the room left is filled by the next new values seen."""
        self.kept = self.busiest(totals)
        return self.kept


class LabelCaps:
    """The caps of the free-text dimensions of the counters (queue, segment, agent, reason,
    topic), and the prices a contact is counted at (CX_CONTACT_COSTS; None: no costs)."""

    __slots__ = ("agent", "costs", "queue", "reason", "segment", "topic")

    def __init__(self, queues: int, segments: int, agents: int, reasons: int = 50,
                 costs: ContactCosts | None = None, topics: int = 20) -> None:
        self.queue = Cap("queue", queues)
        self.segment = Cap("segment", segments)
        self.agent = Cap("agent", agents)
        self.reason = Cap("reason", reasons)
        self.topic = Cap("topic", topics)
        self.costs = costs

    def all(self) -> tuple[Cap, ...]:
        return (self.queue, self.segment, self.agent, self.reason, self.topic)

    def counted(self, c: Counted) -> Counted:
        """`c` with its names as they are counted, priced at the configured costs."""
        queue = self.queue.label(c.queue)
        segment = None if c.segment is None else self.segment.label(c.segment)
        agent = None if c.agent is None else self.agent.label(c.agent)
        reason = None if c.reason is None else self.reason.label(c.reason)
        led_queue, led_reason = c.led_queue, c.led_reason
        cost = led_cost = 0
        costs = self.costs
        # Led to a repeat contact (led_reason set): led_queue is a queue name, not a transfer.
        if led_reason is not None:
            if costs is not None and c.led_channel is not None and led_queue is not None:
                led_cost = costs.price(led_queue, c.led_channel)
            led_reason = self.reason.label(led_reason)
            if led_queue is not None:
                led_queue = self.queue.label(led_queue)
        if costs is not None and c.outcome == "handled":
            cost = costs.price(c.queue, c.channel)
        topics = c.topics
        if topics:
            label = self.topic.label
            labels = [label(t) for t in topics]
            if any(a is not b for a, b in zip(labels, topics, strict=True)):
                topics = tuple(dict.fromkeys(labels))  # several folded into `other` once
        if (queue is c.queue and segment is c.segment and agent is c.agent
                and reason is c.reason and led_queue is c.led_queue
                and led_reason is c.led_reason and not cost and not led_cost
                and topics is c.topics):
            return c
        return replace(c, queue=queue, segment=segment, agent=agent, reason=reason,
                       led_queue=led_queue, led_reason=led_reason, cost=cost,
                       led_cost=led_cost, topics=topics)


def fold_dimensions(by_dimension: Mapping[str, dict[str, int]],
                    kept: Mapping[str, Cap | None]) -> dict[str, dict[str, int]]:
    """Counters summed per dimension (`queue:billing`, ...) with the values of each capped
    kind (`queue`, `segment`, `agent`, `reason`) that `kept` does not keep summed into
    `<kind>:other`, and remembered in its cap as folded. A kind mapped to None is left out
    entirely."""
    out: dict[str, dict[str, int]] = {}
    for dimension, counts in by_dimension.items():
        kind, sep, value = dimension.partition(":")
        if sep and kind in kept:
            cap = kept[kind]
            if cap is None:
                continue
            if value not in cap.kept:
                if value != OTHER:
                    cap.fold(value)
                target = out.setdefault(f"{kind}:{OTHER}", {})
                for name, n in counts.items():
                    target[name] = target.get(name, 0) + n
                continue
        out[dimension] = counts
    return out


def totals_by_value(buckets: Iterable[Mapping[str, int]], kind: str,
                    measure: str = "contacts") -> dict[str, int]:
    """Per value of `kind` (e.g. each queue), the sum of its `measure` hash fields."""
    prefix, suffix = f"{kind}:", f"|{measure}"
    totals: dict[str, int] = {}
    for bucket in buckets:
        for field, n in bucket.items():
            if field.startswith(prefix) and field.endswith(suffix):
                value = field[len(prefix):-len(suffix)]
                totals[value] = totals.get(value, 0) + n
    return totals
