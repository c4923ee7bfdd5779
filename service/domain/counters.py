"""Hour-bucket counters: what one contact adds to the counts of its hour, per dimension.

Each contact is counted in the hour bucket of its `occurred_at`, under every dimension it has:
`all`, `queue:<q>`, `channel:<c>`, `agent:<a>` (handled contacts) and `segment:<s>` (when
known), `reason:<r>` (the call-ended's reason, `unknown` without one), for the FCR population
the driver dimensions `queue_reason:<q>><r>`, `queue_agent:<q>><a>` and, for an unresolved
contact, `flow:<q>><what it led to>`, and `agent_in_queue:<len(q)>:<q><a>` (every field of the
contacts with an agent, per queue and agent: the agents table of one queue). Each topic that
speech or text analytics found in a contact gets `topic:<t>` and `queue_topic:<q>><t>`, with the
speech analytics fields and `contacts` only (TOPIC_FIELDS). When a contact's
verdict changes, its old contribution is retracted and the new one added, so any hour-aligned
range sums exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.domain.storage_names import counter_field, queue_agent_dimension

HOUR = 3600

# Fields of one dimension in one hour bucket.
FIELDS = (
    "contacts", "identified", "abandoned", "self_service", "handled",
    "fcr_total", "unresolved", "resolved", "repeats", "transferred",
    "surveys", "survey_unresolved", "csat_sum", "csat_count",
    "nps_promoters", "nps_detractors", "nps_count", "ces_sum", "ces_count",
    # Repeat drivers and costs (docs/metrics-definitions.md): money in thousandths of the
    # currency of CX_CONTACT_COSTS, priced when the contact is counted.
    "cost", "repeat_cost", "settled_cost", "led_cost",
    # Agents and containment (issue 15, sections 3 and 4): handled contacts a later contact
    # repeated; identified self-service contacts and those a handled contact followed within
    # the window (failed containment); identified abandoned contacts and those any contact
    # followed within the window (abandon callbacks).
    "caused_repeat", "self_service_identified", "failed_containment",
    "abandoned_identified", "abandon_callbacks",
    # survey truth (domain/survey_truth.py): what the latest survey answer about resolution
    # said, against whether a repeat followed; CSAT and NPS by the contact's resolution
    "said_resolved", "said_resolved_repeated", "said_unresolved", "said_unresolved_repeated",
    "csat_sum_resolved", "csat_count_resolved", "csat_sum_unresolved", "csat_count_unresolved",
    "nps_promoters_resolved", "nps_detractors_resolved", "nps_count_resolved",
    "nps_promoters_unresolved", "nps_detractors_unresolved", "nps_count_unresolved",
    # speech and text analytics: contacts analysed for complaints and those with one; contacts
    # with a sentiment and its sum in thousandths
    "voice_complaint_known", "voice_complaints", "voice_sentiment_count", "voice_sentiment_milli",
)

STATUS_NONE, STATUS_PENDING, STATUS_RESOLVED, STATUS_UNRESOLVED = range(4)
SAID_NOTHING, SAID_RESOLVED, SAID_UNRESOLVED = range(3)  # Counted.said

# Repeat drivers: what an unresolved contact led to when no repeat contact did; the reason of
# a contact whose call-ended has none.
LED_TRANSFER = "transfer"
LED_SURVEY = "survey_unresolved"
NO_REASON = "unknown"
# Driver dimensions (`<kind>:<origin queue>><value>`): only these FIELDS are written there.
DRIVER_FIELDS = ("fcr_total", "unresolved", "resolved", "led_cost")
# Topic dimensions (`topic:<t>`, `queue_topic:<q>><t>`): only these FIELDS are written there.
TOPIC_FIELDS = ("contacts", "voice_complaint_known", "voice_complaints",
                "voice_sentiment_count", "voice_sentiment_milli")


# Not frozen, but never changed once built. Classes built per event or contact are plain
# slotted dataclasses: a frozen one's __init__ costs three times as much (object.__setattr__
# per field).
@dataclass(slots=True)
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
    # Repeat drivers and costs. `reason` None: counted by a version without reasons (nothing
    # to retract under `reason:`). `led_queue`: for an unresolved contact, the queue of the
    # contact that repeated it, or TRANSFER / SURVEY_UNRESOLVED when that is why it failed.
    reason: str | None = None
    led_queue: str | None = None
    led_reason: str | None = None
    led_channel: str | None = None
    cost: int = 0  # price of this handled contact, thousandths
    led_cost: int = 0  # price of the contact that repeated it, thousandths
    # Agents and containment: unresolved because a later contact repeated it; followed by a
    # contact within the window (a self-service or abandoned contact, see domain/containment).
    caused_repeat: bool = False
    followed: bool = False
    # survey truth: what the latest survey answer about resolution said (SAID_*); whether a
    # later contact repeated this one is `caused_repeat`
    said: int = 0
    # speech and text analytics: whether a complaint was heard (None: not analysed), and the
    # sentiment in thousandths
    complaint: bool | None = None
    sentiment_milli: int | None = None
    # the topics speech or text analytics found, each once, as counted (capped)
    topics: tuple[str, ...] = ()

    def to_tuple(self) -> tuple[Any, ...]:
        return (self.hour, self.outcome, self.queue, self.channel, self.agent, self.segment,
                self.participates, self.status, self.is_repeat, self.transferred, self.surveys,
                self.survey_unresolved, self.csat_sum, self.csat_count, self.nps_promoters,
                self.nps_detractors, self.nps_count, self.ces_sum, self.ces_count,
                self.identified, self.reason, self.led_queue, self.led_reason,
                self.led_channel, self.cost, self.led_cost,
                self.caused_repeat, self.followed, self.said, self.complaint,
                self.sentiment_milli, self.topics)

    @staticmethod
    def from_tuple(v: tuple[Any, ...]) -> Counted:
        if len(v) > _TOPICS_AT and not isinstance(v[_TOPICS_AT], tuple):  # decoded: a list
            v = (*v[:_TOPICS_AT], tuple(v[_TOPICS_AT]), *v[_TOPICS_AT + 1:])
        return Counted(*v)


_TOPICS_AT = 31  # where `topics` is in Counted.to_tuple()


def hour_of(t: float) -> int:
    return int(t // HOUR) * HOUR


def field_name(dimension: str, name: str) -> str:
    return counter_field(dimension, name)


def vector(c: Counted) -> tuple[int, ...]:
    """The counts of one contact, in the order of FIELDS."""
    outcome, status = c.outcome, c.status
    base = (1, int(c.identified), int(outcome == "abandoned"), int(outcome == "self_service"),
            int(outcome == "handled"), int(c.participates), int(status == STATUS_UNRESOLVED),
            int(status == STATUS_RESOLVED), int(c.is_repeat), int(c.transferred), c.surveys,
            c.survey_unresolved, c.csat_sum, c.csat_count, c.nps_promoters, c.nps_detractors,
            c.nps_count, c.ces_sum, c.ces_count,
            c.cost, c.cost if c.is_repeat else 0,
            c.cost if status in (STATUS_RESOLVED, STATUS_UNRESOLVED) else 0,
            c.led_cost,
            # Agents and containment
            int(c.caused_repeat), int(outcome == "self_service" and c.identified),
            int(outcome == "self_service" and c.followed),
            int(outcome == "abandoned" and c.identified),
            int(outcome == "abandoned" and c.followed))
    # survey truth
    said = c.said if c.participates else SAID_NOTHING
    yes, no = int(said == SAID_RESOLVED), int(said == SAID_UNRESOLVED)
    rep = int(c.caused_repeat)
    res, unres = status == STATUS_RESOLVED, status == STATUS_UNRESOLVED
    return (
        *base, yes, yes * rep, no, no * rep,
        c.csat_sum if res else 0, c.csat_count if res else 0,
        c.csat_sum if unres else 0, c.csat_count if unres else 0,
        c.nps_promoters if res else 0, c.nps_detractors if res else 0,
        c.nps_count if res else 0,
        c.nps_promoters if unres else 0, c.nps_detractors if unres else 0,
        c.nps_count if unres else 0,
        # speech and text analytics
        int(c.complaint is not None), int(c.complaint is True),
        int(c.sentiment_milli is not None), c.sentiment_milli or 0)


_FIELD_ROWS: dict[str, tuple[str, ...]] = {}  # dimension -> hash fields in the order of FIELDS


def _field_row(dimension: str) -> tuple[str, ...]:
    row = _FIELD_ROWS.get(dimension)
    if row is None:
        if len(_FIELD_ROWS) > 50_000:
            _FIELD_ROWS.clear()
        row = _FIELD_ROWS[dimension] = tuple(field_name(dimension, n) for n in FIELDS)
    return row


# A contact's counts are kept per bucket key (hour, queue, channel, agent, segment, reason,
# led_queue, topics) as vectors in the order of FIELDS while settling; they become hash fields per
# dimension only when read.
BucketKey = tuple[int, str, str, str | None, str | None, str | None, str | None,
                  tuple[str, ...]]
_DRIVER_INDEX = frozenset(FIELDS.index(n) for n in DRIVER_FIELDS)
_TOPIC_INDEX = frozenset(FIELDS.index(n) for n in TOPIC_FIELDS)


def bucket_key(c: Counted) -> BucketKey:
    return (c.hour, c.queue, c.channel, c.agent, c.segment, c.reason, c.led_queue, c.topics)


def driver_value(value: str) -> str:
    """A name inside a driver dimension, with `>` (the separator) and `%` escaped."""
    if ">" in value or "%" in value:
        return value.replace("%", "%25").replace(">", "%3E")
    return value


def driver_name(value: str) -> str:
    """The name `driver_value` escaped."""
    return value.replace("%3E", ">").replace("%25", "%") if "%" in value else value


def add_change(counts: dict[BucketKey, list[int]], old: Counted | None,
               new: Counted | None) -> None:
    """Accumulate the change from `old` to `new` as count vectors per bucket key."""
    if old is not None:
        key = bucket_key(old)
        row = counts.get(key)
        if row is None:
            counts[key] = [-n for n in vector(old)]
        else:
            counts[key] = [a - b for a, b in zip(row, vector(old), strict=True)]
    if new is not None:
        key = bucket_key(new)
        row = counts.get(key)
        if row is None:
            counts[key] = list(vector(new))
        else:
            counts[key] = [a + b for a, b in zip(row, vector(new), strict=True)]


def merge_counts(into: dict[BucketKey, list[int]], more: dict[BucketKey, list[int]]) -> None:
    for key, row in more.items():
        have = into.get(key)
        into[key] = row if have is None else [a + b for a, b in zip(have, row, strict=True)]


def expand(counts: dict[BucketKey, list[int]]) -> dict[int, dict[str, int]]:
    """Per-hour hash-field deltas (`dimension|count`) of count vectors; zeros left out."""
    out: dict[int, dict[str, int]] = {}
    for (hour, queue, channel, agent, segment, reason, led_queue, topics), row in counts.items():
        changes = [(i, n) for i, n in enumerate(row) if n]
        if not changes:
            continue
        bucket = out.setdefault(hour, {})
        dims = ["all", f"queue:{queue}", f"channel:{channel}"]
        if agent is not None:
            dims.append(f"agent:{agent}")
        if segment is not None:
            dims.append(f"segment:{segment}")
        # Repeat drivers: the reason dimension, and the driver dimensions (a few fields only)
        # of the FCR population: reason and agent within the origin queue, and the flow from
        # the origin queue to what an unresolved contact led to.
        drivers: list[str] = []
        if reason is not None:
            dims.append(f"reason:{reason}")
            if any(i in _DRIVER_INDEX for i, _ in changes):
                q = driver_value(queue)
                drivers.append(f"queue_reason:{q}>{driver_value(reason)}")
                if agent is not None:
                    drivers.append(f"queue_agent:{q}>{driver_value(agent)}")
                if led_queue is not None:
                    drivers.append(f"flow:{q}>{driver_value(led_queue)}")
        for dim in drivers:
            _add_some(bucket, dim, changes, _DRIVER_INDEX)
        # Speech analytics per topic, over all queues and within the contact's queue.
        if topics and any(i in _TOPIC_INDEX for i, _ in changes):
            q = driver_value(queue)
            for topic in topics:
                _add_some(bucket, f"topic:{topic}", changes, _TOPIC_INDEX)
                _add_some(bucket, f"queue_topic:{q}>{driver_value(topic)}", changes,
                          _TOPIC_INDEX)
        # Agents: per (queue, agent) counts, for the agents table of one queue; both labels
        # are capped, so this dimension is bounded too.
        if agent is not None:
            dims.append(queue_agent_dimension(queue, agent))
        for dim in dims:
            _add_some(bucket, dim, changes)
    return {hour: bucket for hour, bucket in out.items() if bucket}


def _add_some(bucket: dict[str, int], dimension: str, changes: list[tuple[int, int]],
              wanted: frozenset[int] | None = None) -> None:
    """Add the `changes` (of the FIELDS in `wanted`; None: all) under `dimension`."""
    names = _field_row(dimension)
    for i, n in changes:
        if wanted is None or i in wanted:
            name = names[i]
            total = bucket.get(name, 0) + n
            if total:
                bucket[name] = total
            else:
                del bucket[name]
