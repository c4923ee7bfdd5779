"""What the service must end up with, computed offline from the whole stream.

Written from the user documentation (docs/events.md, docs/metrics-definitions.md,
docs/perception.md) and the configuration defaults, on purpose without `service.domain`: two
independent readings of the same rules, so a defect in one shows as a difference.

Defaults: repeat window W = 7 days for every queue, any reason and channel; allowed lateness
L = W; a transfer breaks FCR; perception baseline 70 (no segment baselines), half-life 14
days, wait target 60 s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka.partitioner import murmur2

from tests.chaos.stream import Message

DAY = 86400.0
W = 7 * DAY
L = W
HORIZON = W + L  # transfers and surveys join their contact within W + L in event time
BASELINE = 70.0
HALF_LIFE = 14 * DAY
WAIT_TARGET = 60.0

# Signals at the same time apply in this order (docs/perception.md).
CONTACT, TRANSFER, REPEAT, SURVEY, RESOLUTION = range(5)


def seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def partition_of(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), as every producer must use."""
    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


@dataclass
class ContactTruth:
    event_id: str
    customer_id: str | None
    queue: str
    outcome: str
    is_repeat: bool
    repeat_of: str | None
    transfers: int
    resolution: str | None
    resolution_reasons: list[str]
    surveys: int
    survey_resolved: bool | None

    def fields(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Expected:
    contacts: dict[str, ContactTruth] = field(default_factory=dict)
    counters: Counter[tuple[int, str]] = field(default_factory=Counter)  # (hour, dim|name)
    dead_letters: Counter[str] = field(default_factory=Counter)  # by reason
    perception: dict[str, float] = field(default_factory=dict)  # customer -> score
    watermarks: dict[int, float] = field(default_factory=dict)  # partition -> watermark


def expected(messages: Iterable[Message], partitions: int) -> Expected:
    out = Expected()
    seen: set[str] = set()
    by_state: dict[tuple[str, str], list[tuple[str, dict[str, Any], float]]] = {}
    part_of_state: dict[tuple[str, str], int] = {}
    for m in messages:
        if m.event is None:
            assert m.reject is not None
            out.dead_letters[m.reject] += 1
            continue
        e = m.event
        if e["event_id"] in seen:  # a producer sent it again: applied once
            continue
        seen.add(e["event_id"])
        t = seconds(e["occurred_at"])
        assert m.key is not None
        p = partition_of(m.key, partitions)
        out.watermarks[p] = max(out.watermarks.get(p, t), t)
        state = (("c", e["customer_id"]) if e["customer_id"] is not None
                 else ("u", e["contact_id"]))
        by_state.setdefault(state, []).append((m.kind, e, t))
        part_of_state[state] = p
    for state, events in by_state.items():
        _customer(out, state[0] == "c", events, out.watermarks[part_of_state[state]])
    return out


def _customer(out: Expected, identified: bool, events: list[tuple[str, dict[str, Any], float]],
              watermark: float) -> None:
    contacts: dict[str, tuple[float, dict[str, Any]]] = {}
    transfers: list[tuple[float, dict[str, Any]]] = []
    surveys: list[tuple[float, dict[str, Any]]] = []
    for kind, e, t in events:
        if kind == "call-ended":
            cur = contacts.get(e["contact_id"])
            # a second call-ended of a contact replaces the first when later (time, then id)
            if cur is None or (t, e["event_id"]) > (cur[0], cur[1]["event_id"]):
                contacts[e["contact_id"]] = (t, e)
        elif kind == "transfer":
            transfers.append((t, e))
        else:
            surveys.append((t, e))

    def joined(items: list[tuple[float, dict[str, Any]]], cid: str, ct: float
               ) -> list[tuple[float, dict[str, Any]]]:
        return sorted(((t, e) for t, e in items
                       if e["contact_id"] == cid and abs(t - ct) <= HORIZON),
                      key=lambda x: (x[0], x[1]["event_id"]))

    handled = sorted(((t, cid) for cid, (t, e) in contacts.items()
                      if identified and e["outcome"] == "handled"))
    verdicts: dict[str, ContactTruth] = {}
    for cid, (t, e) in contacts.items():
        tr = joined(transfers, cid, t)
        sv = joined(surveys, cid, t)
        participates = identified and e["outcome"] == "handled"
        repeat_of, reasons, resolution = None, [], None
        if participates:
            i = handled.index((t, cid))
            if i > 0 and t - handled[i - 1][0] <= W:
                repeat_of = handled[i - 1][1]
            if i + 1 < len(handled) and handled[i + 1][0] - t <= W:
                reasons.append("repeat_contact")
            if tr:
                reasons.append("transferred")
            if any(s.get("resolved") is False for _, s in sv):
                reasons.append("survey_unresolved")
            resolution = ("unresolved" if reasons else
                          "resolved" if watermark > t + W else "pending")
        truth = ContactTruth(
            event_id=e["event_id"], customer_id=e["customer_id"], queue=e["queue"],
            outcome=e["outcome"], is_repeat=repeat_of is not None, repeat_of=repeat_of,
            transfers=len(tr), resolution=resolution, resolution_reasons=reasons,
            surveys=len(sv), survey_resolved=sv[-1][1].get("resolved") if sv else None,
        )
        verdicts[cid] = truth
        out.contacts[cid] = truth
        # Failed self-service / abandon callback: followed within W by a handled contact / by
        # any contact of the same identified customer (docs/metrics-definitions.md).
        followed = False
        if identified and e["outcome"] in ("self_service", "abandoned"):
            later = sorted((lt, lid) for lid, (lt, le) in contacts.items()
                           if (lt, lid) > (t, cid)
                           and (e["outcome"] == "abandoned" or le["outcome"] == "handled"))
            followed = bool(later) and later[0][0] - t <= W
        led = None  # what an unresolved contact led to (repeat drivers)
        if resolution == "unresolved":
            i = handled.index((t, cid))
            if "repeat_contact" in reasons:
                led = contacts[handled[i + 1][1]][1]["queue"]
            else:
                led = "transfer" if "transferred" in reasons else "survey_unresolved"
        _count(out.counters, t, e, truth, [s for _, s in sv], followed, led)
    if identified and contacts:
        customer = next(iter(contacts.values()))[1]["customer_id"]
        out.perception[customer] = round(
            _perception(contacts, transfers, surveys, verdicts, watermark), 2)
    elif identified:
        customer = (transfers or surveys)[0][1]["customer_id"]
        out.perception[customer] = round(
            _perception(contacts, transfers, surveys, verdicts, watermark), 2)


def _driver(value: str) -> str:
    """A name inside a repeat-driver dimension: `>` and `%` escaped."""
    return value.replace("%", "%25").replace(">", "%3E")


def _count(counters: Counter[tuple[int, str]], t: float, e: dict[str, Any], v: ContactTruth,
           surveys: list[dict[str, Any]], followed: bool, led: str | None) -> None:
    hour = int(t // 3600) * 3600
    dims = ["all", f"queue:{e['queue']}", f"channel:{e['channel']}"]
    if e.get("agent_id") is not None:
        dims.append(f"agent:{e['agent_id']}")
    if e.get("segment") is not None:
        dims.append(f"segment:{e['segment']}")
    if e.get("agent_id") is not None:  # per queue and agent: the queue's length, then both
        dims.append(f"agent_in_queue:{len(e['queue'])}:{e['queue']}{e['agent_id']}")
    identified = e["customer_id"] is not None
    csat = [s["csat"] for s in surveys if s.get("csat") is not None]
    nps = [s["nps"] for s in surveys if s.get("nps") is not None]
    ces = [s["ces"] for s in surveys if s.get("ces") is not None]
    values = {
        "contacts": 1,
        "identified": int(e["customer_id"] is not None),
        e["outcome"]: 1,
        "fcr_total": int(v.resolution is not None),
        "unresolved": int(v.resolution == "unresolved"),
        "resolved": int(v.resolution == "resolved"),
        "repeats": int(v.is_repeat),
        "transferred": int(v.transfers > 0),
        "surveys": len(surveys),
        "survey_unresolved": sum(1 for s in surveys if s.get("resolved") is False),
        "csat_sum": sum(csat), "csat_count": len(csat),
        "nps_promoters": sum(1 for n in nps if n >= 9),
        "nps_detractors": sum(1 for n in nps if n <= 6), "nps_count": len(nps),
        "ces_sum": sum(ces), "ces_count": len(ces),
        "caused_repeat": int("repeat_contact" in v.resolution_reasons),
        "self_service_identified": int(e["outcome"] == "self_service" and identified),
        "failed_containment": int(e["outcome"] == "self_service" and followed),
        "abandoned_identified": int(e["outcome"] == "abandoned" and identified),
        "abandon_callbacks": int(e["outcome"] == "abandoned" and followed),
    }
    reason = e.get("reason") or "unknown"
    dims.append(f"reason:{reason}")
    # survey truth: the latest answer about resolution, against a later repeat
    answers = [s["resolved"] for s in surveys if s.get("resolved") is not None]
    said = None if v.resolution is None or not answers else answers[-1]
    repeated = int("repeat_contact" in v.resolution_reasons)
    values.update({
        "said_resolved": int(said is True), "said_resolved_repeated": int(said is True) * repeated,
        "said_unresolved": int(said is False),
        "said_unresolved_repeated": int(said is False) * repeated,
    })
    sentiment = e.get("sentiment")
    values.update({  # speech and text analytics
        "voice_complaint_known": int(e.get("complaint") is not None),
        "voice_complaints": int(e.get("complaint") is True),
        "voice_sentiment_count": int(sentiment is not None),
        "voice_sentiment_milli": 0 if sentiment is None else round(sentiment * 1000),
    })
    for r in ("resolved", "unresolved"):
        mine = v.resolution == r
        values.update({
            f"csat_sum_{r}": sum(csat) if mine else 0, f"csat_count_{r}": len(csat) if mine else 0,
            f"nps_promoters_{r}": sum(1 for n in nps if n >= 9) if mine else 0,
            f"nps_detractors_{r}": sum(1 for n in nps if n <= 6) if mine else 0,
            f"nps_count_{r}": len(nps) if mine else 0,
        })
    for dim in dims:
        for name, n in values.items():
            if n:
                counters[(hour, f"{dim}|{name}")] += n
    # Per topic, each once, over all queues and within the queue: contacts and speech analytics.
    for topic in dict.fromkeys(e.get("topics") or ()):
        for dim in (f"topic:{topic}", f"queue_topic:{_driver(e['queue'])}>{_driver(topic)}"):
            for name in ("contacts", "voice_complaint_known", "voice_complaints",
                         "voice_sentiment_count", "voice_sentiment_milli"):
                if values[name]:
                    counters[(hour, f"{dim}|{name}")] += values[name]
    # Repeat drivers: the FCR population by reason and by agent within its queue, and the flow
    # from its queue to what an unresolved contact led to; these fields only.
    if v.resolution is not None:
        q = _driver(e["queue"])
        drivers = [f"queue_reason:{q}>{_driver(reason)}"]
        if e.get("agent_id") is not None:
            drivers.append(f"queue_agent:{q}>{_driver(e['agent_id'])}")
        if led is not None:
            drivers.append(f"flow:{q}>{_driver(led)}")
        for dim in drivers:
            for name in ("fcr_total", "unresolved", "resolved"):
                if values[name]:
                    counters[(hour, f"{dim}|{name}")] += values[name]


def contact_target(outcome: str, wait: float, hold: float) -> tuple[float, float]:
    """(target, weight) of a contact's own experience (docs/perception.md)."""
    if outcome == "abandoned":
        return 15.0, 0.25
    if outcome == "self_service":
        return 65.0, 0.05
    over = min(1.0, max(0.0, wait - WAIT_TARGET) / (4 * WAIT_TARGET))  # fully at 5x target
    target = 85.0 - 70.0 * over - min(25.0, 25.0 * hold / 300.0)  # hold: up to 25 at 5 min
    return max(10.0, target), 0.15


def _perception(contacts: dict[str, tuple[float, dict[str, Any]]],
                transfers: list[tuple[float, dict[str, Any]]],
                surveys: list[tuple[float, dict[str, Any]]],
                verdicts: dict[str, ContactTruth], watermark: float) -> float:
    # (time, rank, ref, order within a survey, target, weight)
    signals: list[tuple[float, int, str, str, float, float]] = []
    for cid, (t, e) in contacts.items():
        target, weight = contact_target(e["outcome"], float(e.get("wait_seconds") or 0),
                                        float(e.get("hold_seconds") or 0))
        signals.append((t, CONTACT, cid, "", target, weight))
        v = verdicts[cid]
        if v.is_repeat:
            signals.append((t, REPEAT, cid, "", 15.0, 0.30))
        if v.resolution == "resolved":
            signals.append((t + W, RESOLUTION, cid, "", 90.0, 0.20))
    for t, e in transfers:
        signals.append((t, TRANSFER, e["event_id"], "", 30.0, 0.15))
    for t, e in surveys:
        # a survey's own answers in the order CES, CSAT, NPS, resolved (docs/perception.md)
        if e.get("ces") is not None:
            signals.append((t, SURVEY, e["event_id"], "1", (7 - e["ces"]) / 6 * 100, 0.25))
        if e.get("csat") is not None:
            signals.append((t, SURVEY, e["event_id"], "2", (e["csat"] - 1) * 25.0, 0.50))
        if e.get("nps") is not None:
            signals.append((t, SURVEY, e["event_id"], "3", e["nps"] * 10.0, 0.35))
        if e.get("resolved") is not None:
            signals.append((t, SURVEY, e["event_id"], "4",
                            100.0 if e["resolved"] else 0.0, 0.30))
    signals.sort(key=lambda s: s[:4])
    score, at, last = BASELINE, None, None
    for t, _, _, _, target, weight in signals:
        if last is not None and t - last > W + L:  # a long silence: start again
            score, at = BASELINE, None
        if at is not None and t > at:
            score = BASELINE + (score - BASELINE) * 0.5 ** ((t - at) / HALF_LIFE)
        at = t if at is None else max(at, t)
        last = t
        score += weight * (target - score)
    if at is not None and watermark > at:
        score = BASELINE + (score - BASELINE) * 0.5 ** ((watermark - at) / HALF_LIFE)
    return score
