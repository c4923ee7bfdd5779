"""Order-independence and exactly-once, checked against a straightforward reference.

For random sets of events (all within the allowed lateness of each other, so none is too late
in any order), every arrival order and every duplication must give the same final verdicts,
counters and perception scores, and those must equal what the reference computes from the
whole sorted history. The reference is written here, separately from service.domain.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.cardinality import LabelCaps
from service.domain.costs import ContactCosts
from service.domain.engine import apply_event, new_state, settle, state_key
from service.domain.events import CallEnded, ContactEvent, SurveyAnswered, Transfer
from service.domain.policy import DAY, Policy, QueuePolicy
from service.domain.records import CustomerState
from tests.unit.builders import call, survey, transfer

WINDOW = 2 * DAY
POLICY = Policy(default=QueuePolicy(repeat_window=WINDOW), allowed_lateness=7 * DAY)


@dataclass(frozen=True)
class Spec:
    kind: str
    contact: int
    customer: int | None
    hours: float
    outcome: str = "handled"
    resolved: bool | None = None


def spec_strategy() -> st.SearchStrategy[Spec]:
    # Coarse times make ties and gaps of exactly one window common.
    hours = st.integers(min_value=0, max_value=26).map(lambda h: h * 6.0)
    contact = st.integers(0, 11)
    calls = st.builds(Spec, st.just("call"), contact, st.sampled_from([0, 0, 0, 1, 1, None]),
                      hours, st.sampled_from(["handled", "handled", "handled", "abandoned",
                                                 "self_service"]))
    return st.one_of(
        calls, calls, calls,
        st.builds(Spec, st.just("transfer"), contact, st.just(0), hours),
        st.builds(Spec, st.just("survey"), contact, st.just(0), hours,
                  st.just("handled"), st.booleans()),
    )


def shape(contact: int) -> tuple[str, str, str | None]:
    """A contact's queue, channel and reason (varied, so the drivers and costs vary)."""
    return (("billing", "tech", "sales")[contact % 3], ("voice", "chat")[contact % 2],
            ("card", "loan", None, "card")[contact % 4])


# Prices in thousandths: a queue's price overrides its channel's.
COSTS = ContactCosts("USD", {"voice": 6500, "chat": 3200}, {"sales": 7900})


def price(queue: str, channel: str) -> int:
    return 7900 if queue == "sales" else {"voice": 6500, "chat": 3200}[channel]


# What speech and text analytics heard, by contact number: nothing, a complaint, a sentiment.
VOICES: tuple[dict[str, Any], ...] = (
    {}, {"sentiment": -0.8, "complaint": True, "topics": ["billing"]}, {},
    {"sentiment": 0.6}, {"complaint": False, "sentiment": -0.3}, {"complaint": True})


def voice(contact: int) -> dict[str, Any]:
    return VOICES[contact % len(VOICES)]


def build(specs: list[Spec]) -> list[ContactEvent]:
    """Events from specs: one call-ended per contact id (the first spec for it wins), and
    transfers/surveys of the same customer as their contact."""
    contacts: dict[int, Spec] = {}
    for s in specs:
        if s.kind == "call" and s.contact not in contacts:
            contacts[s.contact] = s
    events: list[ContactEvent] = []
    for i, s in enumerate(specs):
        owner = contacts.get(s.contact)
        customer_num = owner.customer if owner else 0
        customer = None if customer_num is None else f"cust-{customer_num}"
        cid = f"ct-{s.contact}"
        if s.kind == "call":
            if contacts[s.contact] is s:
                queue, channel, reason = shape(s.contact)
                events.append(call(cid, s.hours, customer, outcome=s.outcome, queue=queue,
                                   channel=channel, reason=reason, **voice(s.contact)))
        elif s.kind == "transfer":
            events.append(transfer(cid, s.hours, customer, event_id=f"tr-{i}"))
        else:
            events.append(survey(cid, s.hours, customer, resolved=s.resolved,
                                 csat=5 if s.resolved else 2, event_id=f"sv-{i}"))
    return events


def run_stream(events: list[ContactEvent]) -> tuple[dict[str, Any], Counter[str], dict[str, float]]:
    """Fold in arrival order with a watermark = newest time seen, then settle at the end."""
    states: dict[str, CustomerState] = {}
    views: dict[str, Any] = {}
    counts: Counter[str] = Counter()
    wm = float("-inf")
    caps = LabelCaps(100, 100, 100, 100, COSTS)  # room for every name: none is capped

    def collect(settled: Any) -> None:
        for u in settled.updates:
            views[u.contact_id] = u.view
        for delta in settled.counter_deltas.values():
            counts.update(delta)

    for event in events:
        wm = max(wm, event.header.occurred_at.timestamp())
        key = state_key(event)
        state = states.setdefault(key, new_state(event))
        apply_event(state, event)
        collect(settle(state, wm, POLICY, caps))
    for state in states.values():
        collect(settle(state, wm, POLICY, caps))
    scores = {}
    from service.domain.engine import derive_verdicts, perception_curve

    for key, state in states.items():
        if state.customer_id is not None:
            curve = perception_curve(state, derive_verdicts(state, wm, POLICY), wm, POLICY)
            scores[key] = curve.state.score
    return views, +counts, scores


def reference(events: list[ContactEvent]) -> tuple[dict[str, tuple[Any, ...]], Counter[str]]:
    """Verdicts and 'all' counters from the whole history, the plain way."""
    wm = max(e.header.occurred_at.timestamp() for e in events)
    calls = [e for e in events if isinstance(e, CallEnded)]
    transferred = {e.header.contact_id for e in events if isinstance(e, Transfer)
                   and any(c.header.contact_id == e.header.contact_id
                           and c.header.customer_id == e.header.customer_id for c in calls)}
    unhappy = {e.header.contact_id for e in events if isinstance(e, SurveyAnswered)
               and e.resolved is False}
    verdicts: dict[str, tuple[Any, ...]] = {}
    counts: Counter[str] = Counter()
    for c in calls:
        cid, t = c.header.contact_id, c.header.occurred_at.timestamp()
        counts["all|contacts"] += 1
        reason = c.reason or "unknown"
        cost = price(c.queue, c.channel) if c.outcome == "handled" else 0
        counts["all|cost"] += cost
        if c.outcome != "handled" or c.header.customer_id is None:
            verdicts[cid] = (None, False, None)
            if c.header.customer_id is not None and c.outcome != "handled":
                # Containment: followed within the window by a handled contact (self-service)
                # or by any contact (abandoned) of the same customer.
                followers = [o for o in calls if o.header.customer_id == c.header.customer_id
                             and (o.outcome == "handled" or c.outcome == "abandoned")
                             and (o.header.occurred_at.timestamp(), o.header.contact_id)
                             > (t, cid)
                             and o.header.occurred_at.timestamp() - t <= WINDOW]
                kind = ("failed_containment" if c.outcome == "self_service"
                        else "abandon_callbacks")
                counts[f"all|{c.outcome}_identified"] += 1
                counts[f"all|{kind}"] += bool(followers)
            continue
        same = sorted((o.header.occurred_at.timestamp(), o.header.contact_id) for o in calls
                      if o.header.customer_id == c.header.customer_id and o.outcome == "handled")
        earlier = [o for o in same if o < (t, cid) and t - o[0] <= WINDOW]
        later = [o for o in same if o > (t, cid) and o[0] - t <= WINDOW]
        reasons = (bool(later), cid in transferred, cid in unhappy)
        status = ("unresolved" if any(reasons) else
                  "resolved" if wm > t + WINDOW else "pending")
        verdicts[cid] = (status, bool(earlier), earlier[-1][1] if earlier else None)
        counts["all|fcr_total"] += 1
        counts[f"all|{status}"] += status != "pending"
        counts["all|repeats"] += bool(earlier)
        counts["all|repeat_cost"] += cost if earlier else 0
        counts["all|settled_cost"] += cost if status != "pending" else 0
        counts[f"reason:{reason}|fcr_total"] += 1
        if status == "unresolved":  # what it led to: its repeat, a transfer, a survey's "no"
            counts[f"reason:{reason}|unresolved"] += 1
            if later:
                repeat = next(o for o in calls if o.header.contact_id == later[0][1])
                led = repeat.queue
                counts[f"reason:{reason}|led_cost"] += price(repeat.queue, repeat.channel)
            else:
                led = "transfer" if cid in transferred else "survey_unresolved"
            counts[f"flow:{c.queue}>{led}|unresolved"] += 1
        counts["all|caused_repeat"] += bool(later)
    return verdicts, +counts


def summary(views: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {cid: (v["resolution"], v["is_repeat"], v["repeat_of"]) for cid, v in views.items()}


def only(counts: Counter[str], names: set[str]) -> Counter[str]:
    return Counter({k: n for k, n in counts.items() if k.startswith("all|")
                    and k.split("|")[1] in names and n})


@settings(max_examples=300, deadline=None)
@given(st.lists(spec_strategy(), min_size=2, max_size=30), st.randoms(use_true_random=False))
def test_any_order_and_duplication_gives_the_reference(specs: list[Spec], rnd: Any) -> None:
    events = build(specs)
    if not events:
        return
    ordered = sorted(events, key=lambda e: e.header.occurred_at)
    base_views, base_counts, base_scores = run_stream(ordered)

    shuffled = list(events)
    rnd.shuffle(shuffled)
    duplicated = shuffled + [rnd.choice(events) for _ in range(3)]
    rnd.shuffle(duplicated)
    for variant in (shuffled, duplicated):
        views, counts, scores = run_stream(variant)
        assert summary(views) == summary(base_views)
        assert counts == base_counts
        assert scores.keys() == base_scores.keys()
        for key, score in scores.items():
            assert abs(score - base_scores[key]) < 1e-6

    expected_verdicts, expected_counts = reference(events)
    assert summary(base_views) == expected_verdicts
    names = {"contacts", "fcr_total", "unresolved", "resolved", "repeats", "cost",
             "repeat_cost", "settled_cost", "caused_repeat", "self_service_identified",
             "failed_containment", "abandoned_identified", "abandon_callbacks"}
    assert only(base_counts, names) == only(expected_counts, names)
    # Repeat drivers: by reason (the FCR population, unresolved, the price of the repeats) and
    # the flows from the origin queue to what an unresolved contact led to.
    drivers = Counter({k: n for k, n in base_counts.items()
                       if (k.startswith("reason:") and k.rpartition("|")[2] in
                           {"fcr_total", "unresolved", "led_cost"})
                       or (k.startswith("flow:") and k.endswith("|unresolved"))})
    assert drivers == Counter({k: n for k, n in expected_counts.items()
                               if k.startswith(("reason:", "flow:"))})


def run_outputs(events: list[ContactEvent], policy: Policy, *, keep_memo: bool) -> list[Any]:
    """Every settle's outputs in arrival order; without the memo, each settle starts from the
    state as storage gives it back (everything derived again)."""
    states: dict[str, CustomerState] = {}
    outputs: list[Any] = []
    wm = float("-inf")
    for event in events:
        wm = max(wm, event.header.occurred_at.timestamp())
        key = state_key(event)
        state = states.setdefault(key, new_state(event))
        if not keep_memo:
            state = states[key] = CustomerState.from_dict(state.to_dict())
        apply_event(state, event)
        out = settle(state, wm, policy)
        outputs.append((key, [(u.contact_id, u.version, u.view) for u in out.updates],
                        out.counter_deltas, out.alerts, out.joins, out.band_change,
                        out.next_due, out.forget))
    return outputs


# Short lateness: records are dropped and the snapshot moves within the generated span.
SHORT = Policy(default=QueuePolicy(repeat_window=DAY / 2), allowed_lateness=DAY / 2)
SCOPED = Policy(default=QueuePolicy(repeat_window=WINDOW, repeat_same_reason=True),
                per_queue={"billing": QueuePolicy(repeat_window=DAY)}, allowed_lateness=7 * DAY)


@settings(max_examples=300, deadline=None)
@given(st.lists(spec_strategy(), min_size=2, max_size=40), st.randoms(use_true_random=False),
       st.sampled_from([POLICY, SHORT, SCOPED]))
def test_the_memo_gives_what_deriving_everything_again_gives(specs: list[Spec], rnd: Any,
                                                             policy: Policy) -> None:
    events = build(specs)
    # Second call-ended events for a contact: corrections that replace (or lose to) the first.
    owners: dict[int, Spec] = {}
    for i, s in enumerate(specs):
        first = owners.setdefault(s.contact, s)
        if s.kind == "call" and first is not s and first.kind == "call":
            customer = None if first.customer is None else f"cust-{first.customer}"
            events.append(call(f"ct-{s.contact}", s.hours, customer, outcome=s.outcome,
                               event_id=f"fix-{i}", wait=400.0, **voice(s.contact + 1)))
    rnd.shuffle(events)
    with_memo = run_outputs(events, policy, keep_memo=True)
    assert with_memo == run_outputs(events, policy, keep_memo=False)
