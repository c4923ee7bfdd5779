"""Agents: a fair coaching view of each agent's first contact resolution.

An agent's FCR here is of **closed** contacts: resolved / (resolved + unresolved), pending
contacts left out (once the range is final there are none). Its uncertainty is the Wilson
score interval at 95%. An agent is compared with the centre **for the same queues**: the
centre's closed FCR of each queue the agent handled, weighted by the agent's closed contacts
in that queue (so an agent who works the hard queues is held to those queues' FCR). An agent
is flagged only when the interval's upper bound is below that benchmark, and ranked or flagged
only with at least `min_contacts` handled contacts. The `other` row (agents beyond
CX_MAX_AGENTS, counted together) is listed but never ranked or flagged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from service.domain.cardinality import OTHER
from service.domain.storage_names import QUEUE_AGENT, split_counter_field, split_queue_agent

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile

RANKED = "ranked"
NOT_ENOUGH = "not_enough_contacts"
NO_CLOSED = "no_closed_contacts"  # enough contacts, none of them closed yet
GROUPED = "other_agents"  # the `other` row: many agents counted together


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion `successes / n`; None when n is 0."""
    if n <= 0:
        return None
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def closed_fcr(counts: Mapping[str, int]) -> float | None:
    """resolved / (resolved + unresolved); None without closed contacts."""
    resolved, unresolved = counts.get("resolved", 0), counts.get("unresolved", 0)
    closed = resolved + unresolved
    return None if closed <= 0 else resolved / closed


def benchmark(per_queue: Mapping[str, Mapping[str, int]],
              centre_queues: Mapping[str, Mapping[str, int]]) -> float | None:
    """The centre's FCR for the agent's queues: each queue's closed FCR (the whole centre's)
    weighted by the agent's closed contacts in it (`per_queue`: the agent's counts by queue);
    None when the agent has no closed contact."""
    weighted, weights = 0.0, 0
    for queue, counts in per_queue.items():
        closed = counts.get("resolved", 0) + counts.get("unresolved", 0)
        fcr = closed_fcr(centre_queues.get(queue, {}))
        if closed <= 0 or fcr is None:
            continue
        weighted += closed * fcr
        weights += closed
    return None if weights == 0 else weighted / weights


@dataclass(frozen=True, slots=True)
class AgentRow:
    agent: str
    handled: int
    fcr_total: int
    resolved: int
    unresolved: int
    caused_repeats: int
    transferred: int
    csat_sum: int
    csat_count: int
    fcr: float | None
    interval: tuple[float, float] | None
    benchmark: float | None
    status: str
    flagged: bool
    rank: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "rank": self.rank,
            "status": self.status,
            "flagged": self.flagged,
            "handled": self.handled,
            "fcr_contacts": self.fcr_total,
            "resolved": self.resolved,
            "unresolved": self.unresolved,
            "pending": self.fcr_total - self.resolved - self.unresolved,
            "fcr": _round(self.fcr),
            "fcr_low": None if self.interval is None else _round(self.interval[0]),
            "fcr_high": None if self.interval is None else _round(self.interval[1]),
            "centre_fcr_same_queues": _round(self.benchmark),
            "caused_repeats": self.caused_repeats,
            "transfers_out": self.transferred,
            "csat_average": (None if self.csat_count <= 0
                             else _round(self.csat_sum / self.csat_count)),
            "csat_count": self.csat_count,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def agent_rows(agents: Mapping[str, Mapping[str, int]],
               agent_queues: Mapping[str, Mapping[str, Mapping[str, int]]],
               centre_queues: Mapping[str, Mapping[str, int]],
               min_contacts: int) -> list[AgentRow]:
    """Every agent's row, in the table's order: the ranked agents by FCR (highest first, then
    more closed contacts, then agent id), then the others by handled contacts (most first,
    then agent id), the `other` row last.

    `agents`: each agent's summed counters; `agent_queues`: each agent's counters per queue;
    `centre_queues`: each queue's counters (all its handled contacts)."""
    rows: list[AgentRow] = []
    for agent, counts in agents.items():
        get = counts.get
        handled, resolved, unresolved = get("handled", 0), get("resolved", 0), get("unresolved", 0)
        if handled <= 0 and get("fcr_total", 0) <= 0:
            continue
        closed = resolved + unresolved
        interval = wilson(resolved, closed)
        bench = benchmark(agent_queues.get(agent, {}), centre_queues)
        if agent == OTHER:
            status = GROUPED
        elif handled < min_contacts:
            status = NOT_ENOUGH
        elif closed == 0:
            status = NO_CLOSED
        else:
            status = RANKED
        flagged = (status == RANKED and interval is not None and bench is not None
                   and interval[1] < bench)
        rows.append(AgentRow(agent, handled, get("fcr_total", 0), resolved, unresolved,
                             get("caused_repeat", 0), get("transferred", 0), get("csat_sum", 0),
                             get("csat_count", 0), closed_fcr(counts), interval, bench, status,
                             flagged))
    ranked = sorted((r for r in rows if r.status == RANKED),
                    key=lambda r: (-(r.fcr or 0.0), -(r.resolved + r.unresolved), r.agent))
    rest = sorted((r for r in rows if r.status in (NOT_ENOUGH, NO_CLOSED)),
                  key=lambda r: (-r.handled, r.agent))
    grouped = [r for r in rows if r.status == GROUPED]
    return [replace(r, rank=i + 1) for i, r in enumerate(ranked)] + rest + grouped


# The counters the table reads, per dimension.
NAMES = ("handled", "fcr_total", "resolved", "unresolved", "caused_repeat", "transferred",
         "csat_sum", "csat_count")


def table_inputs(fields: Mapping[str, int], queue: str | None
                 ) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, dict[str, int]]],
                            dict[str, dict[str, int]]]:
    """(agents, agent_queues, centre_queues) for `agent_rows` from summed counter fields
    (`agent:<a>|n`, `agent_in_queue:...|n`, `queue:<q>|n`); with `queue`, only that queue."""
    agents: dict[str, dict[str, int]] = {}
    agent_queues: dict[str, dict[str, dict[str, int]]] = {}
    centre: dict[str, dict[str, int]] = {}
    for field, n in fields.items():
        dimension, name = split_counter_field(field)
        kind, _, value = dimension.partition(":")
        if kind == "queue":
            if queue is None or value == queue:
                _add(centre.setdefault(value, {}), name, n)
        elif kind == QUEUE_AGENT:
            pair = split_queue_agent(value)
            if pair is None or (queue is not None and pair[0] != queue):
                continue
            _add(agent_queues.setdefault(pair[1], {}).setdefault(pair[0], {}), name, n)
            if queue is not None:
                _add(agents.setdefault(pair[1], {}), name, n)
        elif kind == "agent" and queue is None:
            _add(agents.setdefault(value, {}), name, n)
    return agents, agent_queues, centre


def _add(counts: dict[str, int], name: str, n: int) -> None:
    counts[name] = counts.get(name, 0) + n
