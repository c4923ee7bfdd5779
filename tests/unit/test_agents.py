"""The agents' coaching table, table by table (domain/agents)."""

from __future__ import annotations

import pytest

from service.domain.agents import (
    GROUPED,
    NO_CLOSED,
    NOT_ENOUGH,
    RANKED,
    agent_rows,
    benchmark,
    table_inputs,
    wilson,
)
from service.domain.counters import Counted, add_change, expand
from service.domain.storage_names import queue_agent_dimension, split_queue_agent


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", table I,
# method 3 (Wilson score, no continuity correction), to four decimals.
@pytest.mark.parametrize(("successes", "n", "low", "high"), [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (29, 29, 0.8830, 1.0),
])
def test_wilson_interval_matches_published_figures(successes: int, n: int, low: float,
                                                   high: float) -> None:
    interval = wilson(successes, n)
    assert interval is not None
    assert round(interval[0], 4) == low
    assert round(interval[1], 4) == high


def test_wilson_without_contacts_is_undefined() -> None:
    assert wilson(0, 0) is None


def agent(resolved: int, unresolved: int, handled: int | None = None, **more: int
          ) -> dict[str, int]:
    closed = resolved + unresolved
    return {"handled": closed if handled is None else handled, "fcr_total": closed,
            "resolved": resolved, "unresolved": unresolved, **more}


def test_the_benchmark_weights_each_queues_fcr_by_the_agents_closed_contacts() -> None:
    centre = {"billing": agent(60, 40), "tech": agent(90, 10), "sales": agent(5, 5)}
    # 30 closed in billing (0.6), 10 in tech (0.9): (30 * 0.6 + 10 * 0.9) / 40 = 0.675
    assert benchmark({"billing": agent(20, 10), "tech": agent(5, 5)}, centre) == \
        pytest.approx(0.675)
    assert benchmark({"billing": agent(0, 0, handled=4)}, centre) is None


MIN = 30


def rows_of(agents: dict[str, dict[str, int]], queues: dict[str, dict[str, dict[str, int]]],
            centre: dict[str, dict[str, int]]) -> dict[str, tuple[str, bool, int | None]]:
    return {r.agent: (r.status, r.flagged, r.rank)
            for r in agent_rows(agents, queues, centre, MIN)}


def test_flag_only_when_the_upper_bound_is_below_the_centre_for_the_same_queues() -> None:
    centre = {"billing": agent(800, 200), "tech": agent(300, 300)}  # 0.8 and 0.5
    agents = {
        # 20/40 = 0.5 in billing: upper bound 0.65 < 0.8: flagged.
        "low-billing": agent(20, 20),
        # the same 20/40 in tech, whose centre FCR is 0.5: not flagged.
        "low-tech": agent(20, 20),
        # 28/40 = 0.7 in billing: upper bound 0.82 > 0.8 (the point is below it): not flagged.
        "close": agent(28, 12),
        # 10/20: below the centre, but fewer than MIN handled contacts: never flagged.
        "new": agent(10, 10),
        # enough handled contacts, none closed yet.
        "waiting": agent(0, 0, handled=35),
        # the agents over CX_MAX_AGENTS together.
        "other": agent(5, 95),
    }
    queues = {"low-billing": {"billing": agents["low-billing"]},
              "low-tech": {"tech": agents["low-tech"]},
              "close": {"billing": agents["close"]},
              "new": {"billing": agents["new"]},
              "other": {"billing": agents["other"]}}
    rows = agent_rows(agents, queues, centre, MIN)
    assert [r.agent for r in rows] == ["close", "low-billing", "low-tech", "waiting", "new",
                                       "other"]
    by = {r.agent: r for r in rows}
    assert by["close"].interval is not None
    assert by["close"].interval[1] > 0.8
    assert rows_of(agents, queues, centre) == {
        "close": (RANKED, False, 1),
        "low-billing": (RANKED, True, 2),
        "low-tech": (RANKED, False, 3),
        "waiting": (NO_CLOSED, False, None),
        "new": (NOT_ENOUGH, False, None),
        "other": (GROUPED, False, None),
    }
    assert by["low-billing"].benchmark == pytest.approx(0.8)
    assert by["low-tech"].benchmark == pytest.approx(0.5)


@pytest.mark.parametrize(("handled", "status"), [(29, NOT_ENOUGH), (30, RANKED)])
def test_min_contacts_is_of_handled_contacts(handled: int, status: str) -> None:
    # Handled contacts count, closed or not (unidentified callers' too).
    agents = {"a": agent(3, 2, handled=handled)}
    (row,) = agent_rows(agents, {"a": {"q": agents["a"]}}, {"q": agent(1, 99)}, MIN)
    assert row.status == status
    assert row.rank == (1 if status == RANKED else None)
    assert row.flagged is False  # 3/5: upper bound 0.88 is above the centre's 0.01


def test_row_fields() -> None:
    agents = {"a": agent(30, 10, handled=45, caused_repeat=7, transferred=3, csat_sum=40,
                         csat_count=10, fcr_total=42)}
    (row,) = agent_rows(agents, {"a": {"q": agents["a"]}}, {"q": agent(30, 10)}, MIN)
    view = row.to_json()
    assert view["fcr"] == 0.75
    assert view["pending"] == 2
    assert view["caused_repeats"] == 7
    assert view["transfers_out"] == 3
    assert view["csat_average"] == 4.0
    assert view["csat_count"] == 10
    assert view["fcr_low"] == round(wilson(30, 40)[0], 6)  # type: ignore[index]
    assert view["centre_fcr_same_queues"] == 0.75


@pytest.mark.parametrize(("queue", "agent_id"), [("billing", "a-1"), ("", "x"), ("a:3:b", "|"),
                                                  ("7", "")])
def test_queue_agent_dimension_round_trips(queue: str, agent_id: str) -> None:
    dimension = queue_agent_dimension(queue, agent_id)
    assert split_queue_agent(dimension.partition(":")[2]) == (queue, agent_id)


def counted(queue: str, agent_id: str, status: int) -> Counted:
    return Counted(hour=0, outcome="handled", queue=queue, channel="voice", agent=agent_id,
                   segment=None, participates=True, status=status, is_repeat=False,
                   transferred=False, surveys=0, survey_unresolved=0, csat_sum=0, csat_count=0,
                   nps_promoters=0, nps_detractors=0, nps_count=0, ces_sum=0, ces_count=0,
                   identified=True)


def test_table_inputs_from_the_counters_with_and_without_a_queue() -> None:
    counts: dict[tuple[int, str, str, str | None, str | None], list[int]] = {}
    for queue, agent_id, status in [("billing", "a", 2), ("billing", "a", 3), ("tech", "a", 2),
                                    ("tech", "b", 3)]:
        add_change(counts, None, counted(queue, agent_id, status))
    fields = expand(counts)[0]
    agents, per_queue, centre = table_inputs(fields, None)
    assert agents["a"]["handled"] == 3
    assert agents["b"]["unresolved"] == 1
    assert per_queue["a"] == {"billing": {"handled": 2, "fcr_total": 2, "resolved": 1,
                                          "unresolved": 1, "contacts": 2, "identified": 2},
                              "tech": {"handled": 1, "fcr_total": 1, "resolved": 1,
                                       "contacts": 1, "identified": 1}}
    assert centre["tech"]["handled"] == 2
    agents, per_queue, centre = table_inputs(fields, "tech")
    assert set(agents) == {"a", "b"}
    assert agents["a"]["handled"] == 1
    assert set(centre) == {"tech"}
