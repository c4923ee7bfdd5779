"""Table-driven tests of the fold: every rule of repeats, FCR and versions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from service.domain.counters import FIELDS, hour_of
from service.domain.engine import (
    PRUNE_STEP,
    Settled,
    apply_event,
    fold,
    new_state,
    settle,
    state_key,
)
from service.domain.events import ContactEvent
from service.domain.policy import Policy
from service.domain.records import CustomerState
from tests.unit.builders import DAY, H, call, survey, transfer, ts

POLICY = Policy()


def with_queue(policy: Policy, queue: str, **changes: Any) -> Policy:
    """The policy with one queue's rules changed."""
    base = policy.per_queue.get(queue, policy.default)
    return replace(policy, per_queue={**policy.per_queue, queue: replace(base, **changes)})


def run(events: Sequence[ContactEvent], watermark_hours: float,
        policy: Policy = POLICY) -> tuple[dict[str, CustomerState], dict[str, dict[str, Any]],
                                           dict[int, dict[str, int]]]:
    """Fold events in the given order, the watermark at the end; return states, the latest
    view of each contact, and the summed counters."""
    states: dict[str, CustomerState] = {}
    views: dict[str, dict[str, Any]] = {}
    counters: dict[int, dict[str, int]] = {}
    wm = ts(watermark_hours)
    for event in events:
        key = state_key(event)
        state, settled, _ = fold(states.get(key), event, wm, policy)
        states[key] = state
        _collect(settled, views, counters)
    return states, views, counters


def _collect(settled: Settled, views: dict[str, dict[str, Any]],
             counters: dict[int, dict[str, int]]) -> None:
    for update in settled.updates:
        views[update.contact_id] = update.view
    for hour, delta in settled.counter_deltas.items():
        bucket = counters.setdefault(hour, {})
        for name, n in delta.items():
            bucket[name] = bucket.get(name, 0) + n


def total(counters: dict[int, dict[str, int]], name: str, dim: str = "all") -> int:
    return sum(b.get(f"{dim}|{name}", 0) for b in counters.values())


@pytest.mark.parametrize(
    ("events", "wm", "expect"),
    [
        pytest.param([call("a", 0)], 1, {"a": ("pending", (), False, None)}, id="fresh: pending"),
        pytest.param([call("a", 0)], 24 * 7 + 1, {"a": ("resolved", (), False, None)},
                     id="window passed: resolved"),
        pytest.param([call("a", 0)], 24 * 7, {"a": ("pending", (), False, None)},
                     id="watermark exactly at the window end: still pending"),
        pytest.param([call("a", 0), call("b", 24)], 30,
                     {"a": ("unresolved", ("repeat_contact",), False, None),
                      "b": ("pending", (), True, "a")}, id="repeat within the window"),
        pytest.param([call("a", 0), call("b", 24 * 7)], 24 * 7,
                     {"a": ("unresolved", ("repeat_contact",), False, None),
                      "b": ("pending", (), True, "a")}, id="repeat exactly W later"),
        pytest.param([call("a", 0), call("b", 24 * 7 + 1 / 3600)], 24 * 7 + 1,
                     {"a": ("resolved", (), False, None), "b": ("pending", (), False, None)},
                     id="one second past W: no repeat"),
        pytest.param([call("b", 5), call("a", 5)], 6,
                     {"a": ("unresolved", ("repeat_contact",), False, None),
                      "b": ("pending", (), True, "a")}, id="same time: contact_id breaks the tie"),
        pytest.param([call("a", 0), call("b", 10), call("c", 20)], 21,
                     {"a": ("unresolved", ("repeat_contact",), False, None),
                      "b": ("unresolved", ("repeat_contact",), True, "a"),
                      "c": ("pending", (), True, "b")}, id="repeat_of is the latest earlier"),
        pytest.param([transfer("a", -0.05), call("a", 0)], 1,
                     {"a": ("unresolved", ("transferred",), False, None)},
                     id="transfer before its call-ended"),
        pytest.param([survey("a", 30, resolved=False), call("a", 0)], 31,
                     {"a": ("unresolved", ("survey_unresolved",), False, None)},
                     id="survey before its call-ended"),
        pytest.param([call("a", 0), survey("a", 30, resolved=True, csat=5)], 24 * 8,
                     {"a": ("resolved", (), False, None)}, id="happy survey keeps resolved"),
        pytest.param([call("a", 0), transfer("a", 0.5), survey("a", 40, resolved=False),
                      call("b", 48)], 49,
                     {"a": ("unresolved", ("repeat_contact", "transferred", "survey_unresolved"),
                            False, None), "b": ("pending", (), True, "a")},
                     id="every reason, listed"),
        pytest.param([call("a", 0, customer=None), call("b", 1, customer=None)], 2,
                     {"a": (None, (), False, None), "b": (None, (), False, None)},
                     id="unidentified callers take no part"),
        pytest.param([call("a", 0, outcome="abandoned"), call("b", 1)], 2,
                     {"a": (None, (), False, None), "b": ("pending", (), False, None)},
                     id="an abandoned contact is neither repeat-origin nor FCR"),
        pytest.param([call("a", 0, reason="billing"), call("b", 2, reason="router")], 3,
                     {"a": ("unresolved", ("repeat_contact",), False, None),
                      "b": ("pending", (), True, "a")}, id="any reason by default"),
    ],
)
def test_verdicts(events: list[ContactEvent], wm: float,
                  expect: dict[str, tuple[Any, ...]]) -> None:
    _, views, _ = run(events, wm)
    got = {cid: (v["resolution"], tuple(v["resolution_reasons"]), v["is_repeat"], v["repeat_of"])
           for cid, v in views.items()}
    assert got == expect


def test_scope_narrowed_to_same_reason_and_channel() -> None:
    policy = Policy(default=Policy().default.__class__(repeat_same_reason=True,
                                                      repeat_same_channel=True))
    events = [call("a", 0, reason="bill"), call("b", 1, reason="router"),
              call("c", 2, reason="bill", channel="chat"), call("d", 3, reason="bill")]
    _, views, _ = run(events, 4, policy)
    assert views["a"]["resolution_reasons"] == ["repeat_contact"]
    assert views["d"]["repeat_of"] == "a"
    assert views["b"]["is_repeat"] is False
    assert views["c"]["is_repeat"] is False


def test_per_queue_overrides() -> None:
    policy = with_queue(POLICY, "sales", transfer_breaks_fcr=False, repeat_window=24 * H)
    events = [call("a", 0, queue="sales"), transfer("a", -0.05), call("b", 30),
              call("c", 100, queue="billing"), call("d", 140)]
    _, views, _ = run(events, 24 * 10, policy)
    assert views["a"]["resolution"] == "resolved"  # transfer allowed, b is 30h later > 24h
    assert views["b"]["is_repeat"] is False
    assert views["c"]["repeat_of"] == "b"  # billing keeps 7 days
    assert views["d"]["repeat_of"] == "c"
    _, default_views, _ = run(events, 24 * 10)
    assert default_views["a"]["resolution_reasons"] == ["repeat_contact", "transferred"]


def test_late_repeat_corrects_the_earlier_contacts_counts() -> None:
    states, _views, counters = run([call("a", 0)], 2)
    assert total(counters, "unresolved") == 0
    assert total(counters, "fcr_total") == 1
    # b arrives; a turns unresolved, in a's own hour bucket, for each of a's dimensions.
    state = states["c:cust-1"]
    assert apply_event(state, call("b", 1)) is True
    settled = settle(state, ts(2), POLICY)
    delta = settled.counter_deltas[hour_of(ts(0))]
    assert delta["all|unresolved"] == 1
    assert delta["queue:billing|unresolved"] == 1
    assert delta["agent:agent-1|unresolved"] == 1
    assert [u.contact_id for u in settled.updates] == ["a", "b"]
    assert [u.version for u in settled.updates] == [2, 1]


def test_window_close_emits_resolved_as_a_new_version() -> None:
    state = new_state(call("a", 0))
    apply_event(state, call("a", 0))
    first = settle(state, ts(1), POLICY)
    assert first.updates[0].view["resolution"] == "pending"
    assert first.next_due == ts(24 * 7)
    assert settle(state, ts(24 * 7), POLICY).updates == []
    closed = settle(state, ts(24 * 7 + 1), POLICY)
    assert closed.updates[0].version == 2
    assert closed.updates[0].view["resolution"] == "resolved"
    assert closed.counter_deltas[hour_of(ts(0))] == {
        "all|resolved": 1, "queue:billing|resolved": 1, "channel:voice|resolved": 1,
        "agent:agent-1|resolved": 1, "reason:unknown|resolved": 1,
        # the repeat drivers' dimensions of the FCR population (without a reason: `unknown`)
        "queue_reason:billing>unknown|resolved": 1, "queue_agent:billing>agent-1|resolved": 1,
        # every counter per (queue, agent), for the agents table of one queue
        "agent_in_queue:7:billingagent-1|resolved": 1,
    }


def test_duplicate_event_changes_nothing() -> None:
    state, settled, applied = fold(None, call("a", 0), ts(1), POLICY)
    assert applied is True
    assert settled.updates
    _again, settled2, applied2 = fold(state, call("a", 0), ts(1), POLICY)
    assert applied2 is False
    assert settled2.updates == []
    assert settled2.counter_deltas == {}


def test_second_call_ended_for_a_contact_replaces_it_by_time() -> None:
    early = call("a", 0, event_id="e1", queue="billing")
    late = call("a", 1, event_id="e2", queue="sales")
    for order in ([early, late], [late, early]):
        _, views, counters = run(order, 2)
        assert views["a"]["queue"] == "sales"
        assert total(counters, "contacts", "queue:billing") == 0
        assert total(counters, "contacts", "queue:sales") == 1


def test_counters_of_surveys_and_volumes() -> None:
    events = [call("a", 0, segment="gold"), survey("a", 5, csat=4, nps=10, ces=2),
              call("b", 1, outcome="abandoned"), call("c", 2, outcome="self_service"),
              transfer("d", 3, customer=None), call("d", 3.1, customer=None)]
    _, _, counters = run(events, 4)
    assert total(counters, "contacts") == 4
    assert total(counters, "abandoned") == 1
    assert total(counters, "self_service") == 1
    assert total(counters, "handled") == 2
    assert total(counters, "fcr_total") == 1  # d is unidentified
    assert total(counters, "transferred") == 1
    assert total(counters, "csat_sum", "segment:gold") == 4
    assert total(counters, "nps_promoters") == 1
    assert total(counters, "ces_count") == 1
    assert set(n.split("|")[1] for b in counters.values() for n in b) <= set(FIELDS)


def test_too_late_and_state_is_bounded() -> None:
    from service.domain.engine import is_too_late

    assert is_too_late(call("a", 0), ts(24 * 7 + 1), POLICY)
    assert not is_too_late(call("a", 0), ts(24 * 7), POLICY)
    state = new_state(call("a", 0))
    for i in range(40):
        apply_event(state, call(f"c{i:02d}", i * 24))
        settle(state, ts(i * 24), POLICY)
    # Only contacts within 2L + 2W (28 days) of the watermark are kept, plus at most one
    # prune step (a day): records are dropped a day's worth at a time.
    assert len(state.contacts) <= 30
    assert min(c.t for c in state.contacts.values()) >= ts(39 * 24) - 28 * DAY - PRUNE_STEP
    # Idle long enough, every record is dropped: the customer is kept as their history only.
    idle = settle(state, ts(39 * 24) + 40 * DAY, POLICY)
    assert (idle.forget, idle.idle, idle.next_due) == (False, True, None)
    assert state.is_empty()
    assert state.history is not None
    assert state.history.first == ts(0)
    assert state.history.last == ts(39 * 24)
    assert len(state.history.contacts) == 5
    # An unidentified caller's contact is forgotten.
    caller, _, _ = fold(None, call("u", 0, customer=None), ts(1), POLICY)
    gone = settle(caller, ts(24 * 40), POLICY)
    assert (gone.forget, gone.idle) == (True, False)


def test_worked_example_of_the_definitions_doc() -> None:
    """docs/metrics-definitions.md, 'Worked example': Monday 2026-03-02 onwards."""
    import itertools

    from service.domain.counters import hour_of

    events = [call("c1", 10), call("c2", 48 + 15), transfer("c3", 96 + 9 + 10 / 60),
              call("c3", 96 + 9.5), survey("c3", 192 + 10, resolved=True, csat=4)]
    for order in itertools.permutations(events):
        _, views, counters = run(list(order), 192 + 11)
        assert {c: (v["resolution"], v["resolution_reasons"], v["repeat_of"])
                for c, v in views.items()} == {
            "c1": ("unresolved", ["repeat_contact"], None),
            "c2": ("unresolved", ["repeat_contact"], "c1"),
            "c3": ("unresolved", ["transferred"], "c2"),
        }
        week = [b for h, b in counters.items() if ts(0) <= h < ts(24 * 5)]
        assert sum(b.get("all|fcr_total", 0) for b in week) == 3
        assert sum(b.get("all|unresolved", 0) for b in week) == 3
        assert sum(b.get("all|resolved", 0) for b in week) == 0
        assert counters[hour_of(ts(96 + 9.5))]["all|csat_sum"] == 4


def test_join_counts_grow_and_survive_pruning() -> None:
    state = new_state(survey("a", 1, resolved=True))
    apply_event(state, survey("a", 1, resolved=True))
    first = settle(state, ts(1), POLICY)
    assert first.joins == (0, 1, 0, 0)  # a survey waiting for its contact
    apply_event(state, call("a", 0))
    apply_event(state, transfer("a", -0.05))
    second = settle(state, ts(2), POLICY)
    assert second.joins == (1, 0, 1, 1)  # now joined, and a joined transfer
    pruned = settle(state, ts(24 * 40), POLICY)
    assert pruned.idle is True
    assert pruned.joins == (0, 0, 0, 0)  # dropping old records does not shrink the totals


def test_state_round_trip_and_older_states_still_load() -> None:
    from service.domain.records import CustomerState

    state, _, _ = fold(None, call("a", 0), ts(1), POLICY)
    apply_event(state, survey("a", 2, csat=3))
    settle(state, ts(3), POLICY)
    data = state.to_dict()
    assert CustomerState.from_dict(data).to_dict() == data
    older = {k: v for k, v in data.items() if k not in ("v", "l", "b", "j")}
    loaded = CustomerState.from_dict(older)
    assert loaded.joins == (0, 0, 0, 0)
    assert loaded.contacts.keys() == {"a"}
