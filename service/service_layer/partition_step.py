"""One batch applied to one input partition, without I/O: events in, a commit out.

`fold_partition` applies the partition's events to their customers' states and moves the
partition's watermark; `settle_partition` then settles every touched state and every state
whose timer fell due at the new watermark, and builds the commit: states, counter deltas,
timers, clock fields and the outbox of outputs. Between the two the caller reads the timers
that fall due (and their states) through the store: which ones depends on the new watermark.

Nothing here reads or writes a store or a topic; the states are mutated in place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from service.domain import watermark as clocks
from service.domain.cardinality import LabelCaps
from service.domain.counters import BucketKey, expand, merge_counts
from service.domain.engine import (
    Settled,
    alert_payload,
    apply_event,
    held_apart,
    is_too_late,
    new_state,
    overflows,
    settle,
    state_key,
)
from service.domain.events import ContactEvent, RejectReason
from service.domain.partition import (
    NO_WATERMARK,
    PartitionCommit,
    PartitionData,
    UndecodableState,
    band_field,
    progress_fields,
)
from service.domain.policy import Policy
from service.domain.records import CustomerState
from service.domain.storage_names import (
    CLOCK_AT_RISK,
    CLOCK_AT_RISK_SEGMENT,
    CLOCK_JOINS,
    CLOCK_NOISY,
    CLOCK_VALUE_AT_RISK,
    RECENT_SECONDS,
)
from service.service_layer.dead_letters import (
    DEAD_LETTER_MAX_COPY,
    PROCESSING_ERROR,
    InputMessage,
    dead_letter_key,
    dead_letter_record,
    timestamp_text,
)
from service.service_layer.outbox import ALERT, CONTACT, DEAD, OutboxEntry, outbox_item

log = logging.getLogger(__name__)
TOO_LATE = RejectReason.TOO_LATE.value
# (topic, partition, last applied offset) -> whether the topic-partition has messages not
# applied yet (the watermark waits for a lagging topic).
Lagging = Callable[[str, int, int | None], bool]


def _never_lagging(topic: str, partition: int, last_applied: int | None) -> bool:
    return False


@dataclass(frozen=True)
class StepRules:
    """What decides how events are applied: the policy and the service's limits."""

    policy: Policy
    topic_kinds: Mapping[str, str]  # input topic -> event kind
    input_topics: tuple[str, ...] = ()
    max_contacts: int = 0  # CX_MAX_CONTACTS_PER_CUSTOMER (0: no limit)
    caps: LabelCaps | None = None
    dead_letter_max_copy: int = DEAD_LETTER_MAX_COPY
    lagging: Lagging = _never_lagging


@dataclass
class BatchOutcome:
    applied: int = 0
    duplicates: int = 0
    invalid: int = 0
    too_late: int = 0
    quarantined: int = 0  # dead-lettered as processing_error while applying the batch
    updates: int = 0
    alerts: int = 0
    suppressed: int = 0  # events of erased customers, dropped

    def add(self, other: BatchOutcome) -> None:
        for name in ("applied", "duplicates", "invalid", "too_late", "quarantined", "updates",
                     "alerts", "suppressed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class PartitionPlan:
    """A partition's commit, and what the batch did there (for the metrics)."""

    commit: PartitionCommit
    outcome: BatchOutcome
    per_topic: dict[str, list[int]] = field(default_factory=dict)  # applied, dup, late
    # (topic, reason) of the events dead-lettered while folding (too late, quarantined)
    late: list[tuple[str, str]] = field(default_factory=list)
    watermark: float | None = None
    # (kind, labels, count) of what was published: first sightings, repeats, corrections
    published: list[tuple[str, tuple[str, str, str], int]] = field(default_factory=list)
    # The outbox items of `commit`, not encoded
    outputs: list[OutboxEntry] = field(default_factory=list)
    # Count vectors of the settled contacts; hash fields of `commit.counters` once at the end
    counts: dict[BucketKey, list[int]] = field(default_factory=dict)
    # Due states (no event of the batch) that could not be decoded or settled: their timers
    # are dropped, the states left as stored, and not kept in memory.
    state_errors: list[str] = field(default_factory=list)

    def emit(self, kind: str, key: str | None, version: int, value: bytes) -> None:
        self.commit.outbox.append(outbox_item(kind, key, version, value))
        self.outputs.append((kind, key, version, value))


@dataclass
class Fold:
    """A partition's events applied to their states, before settling."""

    plan: PartitionPlan
    offsets: dict[str, int]
    newest: dict[str, float]
    applied: dict[str, int]
    states: dict[str, CustomerState] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)
    watermark: float | None = None


def fold_partition(partition: int, items: Sequence[tuple[InputMessage, ContactEvent]],
                   data: PartitionData, rules: StepRules, *, writer: str = "",
                   skip: Mapping[tuple[str, int], str] | None = None,
                   dropped: Sequence[InputMessage] = ()) -> Fold:
    """Apply the partition's events to their states; the new watermark. Events at or below
    the clock's offset of their topic were applied before (duplicates); those named in `skip`
    (quarantined) are dead-lettered as processing_error instead; those in `dropped` (of erased
    customers) are only recorded as read. `writer`: the committing worker's token."""
    clock = data.clock
    outcome = BatchOutcome()
    plan = PartitionPlan(PartitionCommit(clock.seq, {}, {}, {}, [], {}, [], writer=writer),
                         outcome)
    fold = Fold(plan, dict(clock.offsets), dict(clock.newest), dict(clock.applied))
    offsets, newest = fold.offsets, fold.newest
    per_topic = plan.per_topic
    watermark = clock.watermark
    now: datetime | None = None
    for msg, event in items:
        topic = msg.topic
        counts = per_topic.get(topic)
        if counts is None:
            counts = per_topic[topic] = [0, 0, 0]
        last = offsets.get(topic)
        if last is not None and msg.offset <= last:
            counts[1] += 1  # applied before a restart: Kafka delivered it again
            outcome.duplicates += 1
            continue
        offsets[topic] = msg.offset
        if skip and (topic, msg.offset) in skip:
            outcome.quarantined += 1
            plan.late.append((topic, PROCESSING_ERROR))
            now = now or datetime.now(UTC)
            _dead_letter(plan, msg, PROCESSING_ERROR, skip[(topic, msg.offset)], now, rules)
            continue
        t = event.header.occurred_at.timestamp()
        if is_too_late(event, watermark, rules.policy):
            counts[2] += 1
            outcome.too_late += 1
            plan.late.append((topic, TOO_LATE))
            now = now or datetime.now(UTC)
            _dead_letter(plan, msg, TOO_LATE,
                         f"{rules.topic_kinds[topic]}.occurred_at: older than the watermark "
                         "minus the allowed lateness "
                         f"({timestamp_text(datetime.fromtimestamp(t, UTC))})", now, rules)
            continue
        seen = newest.get(topic)
        if seen is None or t > seen:
            newest[topic] = t
        if _apply(fold, data, event, rules.max_contacts):
            counts[0] += 1
            outcome.applied += 1
            fold.applied[topic] = fold.applied.get(topic, 0) + 1
        else:
            counts[1] += 1
            outcome.duplicates += 1
    for msg in dropped:  # read and dropped: the partition is not behind because of them
        last = offsets.get(msg.topic)
        if last is None or msg.offset > last:
            offsets[msg.topic] = msg.offset
    lagging = [t for t in rules.input_topics if rules.lagging(t, partition, offsets.get(t))]
    fold.watermark = plan.watermark = clocks.advance(watermark, newest, lagging)
    return fold


def _apply(fold: Fold, data: PartitionData, event: ContactEvent, max_contacts: int) -> bool:
    """Apply one event to its state (held apart from a noisy customer's when it overflows
    CX_MAX_CONTACTS_PER_CUSTOMER); whether it was new."""
    states = fold.states
    key = state_key(event)
    state = states.get(key)
    if state is None:
        state = data.state(key) or new_state(event)
        states[key] = state
    if overflows(state, event, max_contacts):
        if not state.noisy:
            state.noisy = True
            fold.touched.add(key)
            fold.plan.commit.increment(CLOCK_NOISY, 1)
        key, fresh = held_apart(event)
        state = states.get(key) or data.state(key) or fresh
        states[key] = state
    if apply_event(state, event):
        fold.touched.add(key)
        return True
    return False


def _dead_letter(plan: PartitionPlan, msg: InputMessage, reason: str, message: str,
                 now: datetime, rules: StepRules) -> None:
    max_copy = rules.dead_letter_max_copy
    key = dead_letter_key(msg, max_copy)
    record = dead_letter_record(msg, reason, message, now, max_copy)
    plan.emit(DEAD, key.decode("utf-8", "replace") if key else None, 0, orjson.dumps(record))


def settle_partition(fold: Fold, data: PartitionData, rules: StepRules) -> PartitionPlan:
    """Settle the touched states and those whose timers fell due (`data.due`, read at the new
    watermark); the partition's commit."""
    plan = fold.plan
    states, touched, watermark = fold.states, fold.touched, fold.watermark
    timers_only = _due_states(fold, data)  # touched by no event of the batch
    for key in touched:
        if watermark is None:
            # No watermark yet (a lagging topic of this partition was not read): keep the
            # state and settle it as soon as there is one.
            plan.commit.states[key] = states[key]
            plan.commit.timers_add[key] = NO_WATERMARK
        elif key not in timers_only:
            _settle(key, states[key], watermark, plan, rules)
        else:
            try:
                _settle(key, states[key], watermark, plan, rules)
            except Exception:
                # No event of the batch is tied to it: drop its timer and leave the state
                # as stored (its events are dead-lettered when they come).
                log.exception("the stored state %r cannot be settled; its timer is dropped",
                              key)
                plan.state_errors.append(key)
                plan.commit.timers_remove.append(key)
    plan.commit.clock_fields = progress_fields(watermark, fold.newest, fold.offsets,
                                               fold.applied)
    if watermark is not None and plan.commit.recent_add:
        plan.commit.recent_before = watermark - RECENT_SECONDS
    plan.commit.counters = expand(plan.counts)
    return plan


def _due_states(fold: Fold, data: PartitionData) -> set[str]:
    """Add the states whose timers fell due to those to settle; the keys of those no event of
    the batch touched."""
    plan, states, watermark = fold.plan, fold.states, fold.watermark
    timers_only: set[str] = set()
    for member, due_at in data.due:
        if watermark is None or due_at >= watermark:
            break  # timers come sorted by due time
        if member not in states:
            if not data.has(member):
                continue  # not read (the caller reads every due one)
            try:
                loaded = data.state(member)
            except UndecodableState as exc:
                # No event of the batch is tied to it: drop its timer (its events are
                # dead-lettered when they come) and leave the value for inspection.
                log.error("%s; its timer is dropped", exc)
                plan.state_errors.append(member)
                plan.commit.timers_remove.append(member)
                continue
            if loaded is None:  # expired meanwhile
                plan.commit.timers_remove.append(member)
                continue
            states[member] = loaded
        if member not in fold.touched:
            timers_only.add(member)
        fold.touched.add(member)
    return timers_only


def _settle(key: str, state: CustomerState, watermark: float, plan: PartitionPlan,
            rules: StepRules) -> None:
    settled: Settled = settle(state, watermark, rules.policy, rules.caps)
    # Everything that can raise comes before the plan changes: a state that fails here
    # leaves the plan as it was (settle_partition).
    views = [orjson.dumps(update.view) for update in settled.updates]
    alerts = [orjson.dumps(alert_payload(alert)) for alert in settled.alerts]
    entry = settled.risk_entry
    risk = None if entry is None else orjson.dumps(entry.to_json())
    commit = plan.commit
    if state.noisy and (settled.forget or len(state.contacts) < rules.max_contacts):
        state.noisy = False  # back under the limit: its new contacts are its own again
        commit.increment(CLOCK_NOISY, -1)
    merge_counts(plan.counts, settled.counts)
    recent_from = watermark - RECENT_SECONDS
    for update, encoded in zip(settled.updates, views, strict=True):
        view = update.view
        labels = (view["queue"], view["channel"], view["outcome"])
        contact = state.contacts.get(update.contact_id)
        if contact is not None and contact.t >= recent_from:  # a queue's latest contacts
            commit.recent_add[orjson.dumps([contact.queue, update.contact_id])] = contact.t
        if update.version == 1:
            plan.published.append(("contact", labels, 1))
            if view["is_repeat"]:
                plan.published.append(("repeat", labels, 1))
        else:
            plan.published.append(("correction", labels, 1))
        plan.emit(CONTACT, update.contact_id, update.version, encoded)
    for name, delta in zip(CLOCK_JOINS, settled.joins, strict=True):
        if delta:
            commit.increment(name, delta)
    if settled.band_change is not None:
        old, new = settled.band_change
        for band, delta in ((old, -1), (new, 1)):
            if band is not None:
                commit.increment(band_field(band), delta)
    for alert, payload in zip(settled.alerts, alerts, strict=True):
        commit.increment(CLOCK_AT_RISK, 1 if alert.alert == "at_risk_entered" else -1)
        plan.emit(ALERT, alert.customer_id, alert.version, payload)
    if entry is not None and risk is not None:
        commit.risk_put[entry.customer_id] = (risk, entry.sort_scores())
    elif settled.risk_removed and state.customer_id is not None:
        commit.risk_put.pop(state.customer_id, None)
        commit.risk_remove.append(state.customer_id)
    if settled.risk_change is not None:
        for counted, sign in zip(settled.risk_change, (-1, 1), strict=True):
            if counted is not None:
                commit.increment(CLOCK_VALUE_AT_RISK + counted[0], sign * counted[1])
                commit.increment(CLOCK_AT_RISK_SEGMENT + counted[0], sign)
    plan.outcome.updates += len(settled.updates)
    plan.outcome.alerts += len(settled.alerts)
    if settled.forget:
        commit.states[key] = None
        commit.timers_remove.append(key)
    else:
        commit.states[key] = state
        if settled.next_due is not None:
            commit.timers_add[key] = settled.next_due
        else:  # idle: kept until CX_STATE_IDLE_TTL, nothing left to settle
            commit.timers_remove.append(key)
