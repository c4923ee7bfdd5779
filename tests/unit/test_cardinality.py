"""Caps on the queue, segment and agent names that input controls."""

from __future__ import annotations

from service.domain import cardinality
from service.domain.cardinality import OTHER, Cap, LabelCaps, fold_dimensions, totals_by_value
from service.domain.counters import BucketKey, expand, merge_counts
from service.domain.engine import apply_event, new_state, settle
from service.domain.policy import Policy
from service.domain.records import CustomerState
from tests.unit.builders import call, survey, ts


def test_the_first_names_are_kept_while_there_is_room() -> None:
    cap = Cap("queue", 3)
    assert [cap.label(q) for q in ("a", "b", "a", "c", "d", "e", "b")] == [
        "a", "b", "a", "c", OTHER, OTHER, "b"]
    assert cap.kept == {"a", "b", "c"}
    assert len(cap.folded) == 2


def test_a_name_literally_other_is_always_other() -> None:
    cap = Cap("queue", 3)
    assert cap.label("other") == OTHER
    assert cap.kept == set()
    assert len(cap.folded) == 0


def test_a_cap_of_zero_keeps_nothing() -> None:
    cap = Cap("agent", 0)
    assert cap.label("a1") == OTHER
    assert cap.busiest({"a1": 5}) == set()


def test_the_busiest_names_are_kept_after_ranking() -> None:
    cap = Cap("queue", 2)
    for q in ("a", "b"):
        cap.label(q)
    kept = cap.rank({"a": 1, "b": 9, "c": 9, "d": 4, OTHER: 100})
    assert kept == {"b", "c"}  # ties by name; `other` never ranks
    assert cap.label("a") == OTHER
    assert cap.label("c") == "c"


def test_room_freed_by_ranking_goes_to_the_next_new_name() -> None:
    cap = Cap("queue", 3)
    cap.rank({"a": 3})
    assert cap.label("x") == "x"
    assert cap.label("y") == "y"
    assert cap.label("z") == OTHER


def test_folded_names_are_remembered_up_to_a_bound() -> None:
    cap = Cap("queue", 0)
    for i in range(cardinality.REMEMBERED + 50):
        cap.label(f"q{i}")
    assert len(cap.folded) == cardinality.REMEMBERED


def test_fold_dimensions_sums_the_others() -> None:
    queues = Cap("queue", 2)
    queues.rank({"a": 10, "b": 5, "c": 1})
    by_dimension = {
        "all": {"contacts": 6}, "channel:voice": {"contacts": 6},
        "queue:a": {"contacts": 3}, "queue:b": {"contacts": 1},
        "queue:c": {"contacts": 1, "handled": 1}, "queue:d": {"contacts": 1},
        "agent:x": {"contacts": 2},
    }
    out = fold_dimensions(by_dimension, {"queue": queues, "agent": None})
    assert out == {
        "all": {"contacts": 6}, "channel:voice": {"contacts": 6},
        "queue:a": {"contacts": 3}, "queue:b": {"contacts": 1},
        "queue:other": {"contacts": 2, "handled": 1},
    }
    assert len(queues.folded) == 2


def test_totals_by_value() -> None:
    buckets = [{"queue:a|contacts": 2, "queue:a|handled": 1, "queue:b|x|contacts": 1},
               {"queue:a|contacts": 3, "agent:a|contacts": 7}]
    assert totals_by_value(buckets, "queue") == {"a": 5, "b|x": 1}


def _fields(counts: dict[int, dict[str, int]]) -> set[str]:
    return {f.split("|")[0] for bucket in counts.values() for f in bucket}


def test_counters_keep_at_most_the_cap_and_every_total_is_exact() -> None:
    policy = Policy()
    capped = LabelCaps(queues=5, segments=2, agents=3)
    with_caps: dict[BucketKey, list[int]] = {}
    without: dict[BucketKey, list[int]] = {}
    states: dict[str, tuple[CustomerState, CustomerState]] = {}
    for i in range(60):
        customer = f"cust-{i % 7}"
        event = call(f"c{i}", i * 0.5, customer, queue=f"q{i}", segment=f"s{i % 9}")
        a, b = states.setdefault(customer, (new_state(event), new_state(event)))
        apply_event(a, event)
        apply_event(b, event)
        merge_counts(with_caps, settle(a, ts(i * 0.5), policy, capped).counts)
        merge_counts(without, settle(b, ts(i * 0.5), policy).counts)
    capped_fields = expand(with_caps)
    dims = _fields(capped_fields)
    assert len({d for d in dims if d.startswith("queue:")}) <= 6
    assert len({d for d in dims if d.startswith("segment:")}) <= 3
    assert "queue:other" in dims
    assert "segment:other" in dims
    full = expand(without)
    assert len({d for d in _fields(full) if d.startswith("queue:")}) == 60
    # The centre's totals do not change, and the queues' counts add up to them.
    for hour, bucket in full.items():
        assert {k: v for k, v in bucket.items() if k.startswith("all|")} == {
            k: v for k, v in capped_fields[hour].items() if k.startswith("all|")}
    for name in ("contacts", "handled", "fcr_total"):
        queue_sum = sum(n for b in capped_fields.values() for f, n in b.items()
                        if f.startswith("queue:") and f.endswith(f"|{name}"))
        assert queue_sum == sum(b.get(f"all|{name}", 0) for b in capped_fields.values())


def test_a_retraction_goes_where_the_count_was_added_after_the_ranking_changed() -> None:
    policy = Policy()
    caps = LabelCaps(queues=1, segments=1, agents=1)
    first = call("c1", 0, queue="kept-then")
    state = new_state(first)
    apply_event(state, first)
    total: dict[BucketKey, list[int]] = {}
    merge_counts(total, settle(state, ts(0), policy, caps).counts)
    caps.queue.rank({"another": 100})  # the busiest queue is another one now
    # A survey changes c1's verdict: its old counts are retracted, its new ones added.
    answer = survey("c1", 1, resolved=False)
    apply_event(state, answer)
    merge_counts(total, settle(state, ts(1), policy, caps).counts)
    fields = expand(total)
    hour = next(iter(fields))
    assert fields[hour].get("queue:kept-then|contacts", 0) == 0
    assert fields[hour]["queue:other|contacts"] == 1
    assert fields[hour]["queue:other|unresolved"] == 1
    assert all(n >= 0 for n in fields[hour].values())
