from __future__ import annotations

from collections import Counter
from datetime import datetime

import orjson

from service.domain.events import Rejection
from service.domain.validation import validate_event
from service.tools.traffic import HOURLY_PROFILE, TrafficModel

START = datetime.fromisoformat("2026-11-02T00:00:00+00:00").timestamp()


def simulate(seed: int, hours: float = 72, **kw: float) -> list[object]:
    model = TrafficModel(start=START, contacts_per_second=0.05, customers=300, seed=seed, **kw)
    return list(model.advance(START + hours * 3600))


def test_same_seed_same_traffic() -> None:
    assert simulate(7) == simulate(7)
    assert simulate(7) != simulate(8)


def test_profile_averages_one() -> None:
    assert abs(sum(HOURLY_PROFILE) / 24 - 1) < 1e-9
    assert max(HOURLY_PROFILE) > 3 * min(HOURLY_PROFILE)


def test_traffic_has_what_a_contact_centre_sees() -> None:
    msgs = simulate(3, hours=96, duplicate_share=0.02, malformed_share=0.01)
    kinds: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    invalid = 0
    first_seen: dict[tuple[str, str], int] = {}
    values = Counter(m.value for m in msgs)  # type: ignore[attr-defined]
    customers: Counter[str] = Counter()
    for i, m in enumerate(msgs):
        assert m.publish_at >= msgs[i - 1].publish_at if i else True  # type: ignore[attr-defined]
        try:
            obj = orjson.loads(m.value)  # type: ignore[attr-defined]
        except orjson.JSONDecodeError:
            invalid += 1
            continue
        result = validate_event(m.kind, obj)  # type: ignore[attr-defined]
        if isinstance(result, Rejection):
            invalid += 1
            continue
        kinds[m.kind] += 1  # type: ignore[attr-defined]
        first_seen.setdefault((m.kind, obj["contact_id"]), i)  # type: ignore[attr-defined]
        if m.kind == "call-ended":  # type: ignore[attr-defined]
            outcomes[obj["outcome"]] += 1
            if obj["customer_id"] and obj["outcome"] == "handled":
                customers[obj["customer_id"]] += 1
    assert kinds["call-ended"] > 1000
    assert kinds["transfer"] > 50
    assert kinds["survey-answered"] > 100
    assert set(outcomes) == {"handled", "abandoned", "self_service"}
    assert 0 < invalid < 0.05 * len(msgs)
    assert sum(1 for n in values.values() if n > 1) > 10  # duplicates were sent
    assert sum(1 for n in customers.values() if n > 1) > 50  # customers called back
    transfers_first = sum(
        1 for (kind, contact), i in first_seen.items()
        if kind == "transfer" and i < first_seen.get(("call-ended", contact), -1)
    )
    assert transfers_first > 10  # some transfers are published before their call-ended


def test_arrivals_follow_the_day() -> None:
    msgs = simulate(5, hours=24 * 7, malformed_share=0.0, duplicate_share=0.0)
    by_hour: Counter[int] = Counter()
    for m in msgs:
        if m.kind == "call-ended":  # type: ignore[attr-defined]
            started = orjson.loads(m.value)["started_at"]  # type: ignore[attr-defined]
            by_hour[datetime.fromisoformat(started).hour] += 1
    assert by_hour[10] > 5 * by_hour[3]
