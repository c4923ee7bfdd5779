"""The benchmark workload: the Anonymous Bank month as call-ended events, with synthesized
transfers and surveys, repeated with shifted ids and times until the wanted size is reached.

Deterministic (fixed seed). Each repetition is the month shifted by 35 days with its own
customer and contact ids, so repetitions are new customers, not duplicates. Events come out in
event-time order, each as (topic kind, key, JSON bytes).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from service.tools.anonymous_bank import ImportReport, convert, parse_utc_offset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "anonymous-bank" / "1999-08.tsv"
DATA_FALLBACK = Path("/work/shared/data/anonymous-bank/1999-08.tsv")
SHIFT = timedelta(days=35)

Message = tuple[str, bytes | None, bytes]


def month_calls(path: Path | None = None) -> list[dict[str, Any]]:
    """The month's call-ended events, as the importer produces them (BENCH_DATA names
    another Anonymous Bank file)."""
    named = os.environ.get("BENCH_DATA")
    source = path or (Path(named) if named else DATA if DATA.exists() else DATA_FALLBACK)
    with open(source, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    return list(convert(lines, parse_utc_offset("+02:00"), ImportReport()))


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def synthesize(calls: list[dict[str, Any]], seed: int = 7
               ) -> list[tuple[float, str, dict[str, Any]]]:
    """(event time, kind, event) for the calls plus transfers (8% of handled calls) and
    surveys (25% of handled calls of identified customers, 5 minutes to 2 days later)."""
    rng = random.Random(seed)
    out: list[tuple[float, str, dict[str, Any]]] = []
    for call in calls:
        ended = _parse(call["occurred_at"])
        out.append((ended.timestamp(), "call-ended", call))
        if call["outcome"] != "handled":
            continue
        cid, customer = call["contact_id"], call["customer_id"]
        if rng.random() < 0.08:
            moment = ended - timedelta(seconds=call["talk_seconds"] / 2)
            out.append((moment.timestamp(), "transfer", {
                "event_id": f"{cid}-tr", "occurred_at": _iso(moment), "contact_id": cid,
                "customer_id": customer, "from_queue": call["queue"], "to_queue": "PS",
                "kind": "warm"}))
        if customer is not None and rng.random() < 0.25:
            moment = ended + timedelta(seconds=rng.uniform(300, 2 * 86400))
            resolved = rng.random() < 0.75
            out.append((moment.timestamp(), "survey-answered", {
                "event_id": f"{cid}-sv", "occurred_at": _iso(moment), "contact_id": cid,
                "customer_id": customer, "source": "ivr",
                "csat": rng.randint(3, 5) if resolved else rng.randint(1, 3),
                "resolved": resolved}))
    out.sort(key=lambda x: x[0])
    return out


def _shift(event: dict[str, Any], rep: int) -> dict[str, Any]:
    if rep == 0:
        return event
    shifted = dict(event)
    tag = f"r{rep}-"
    shifted["event_id"] = tag + event["event_id"]
    shifted["contact_id"] = tag + event["contact_id"]
    if event.get("customer_id") is not None:
        shifted["customer_id"] = tag + event["customer_id"]
    for name in ("occurred_at", "started_at"):
        if name in event:
            shifted[name] = _iso(_parse(event[name]) + SHIFT * rep)
    return shifted


def events(total: int, base: list[tuple[float, str, dict[str, Any]]] | None = None
           ) -> Iterator[tuple[str, dict[str, Any]]]:
    """`total` events: the month, then the month shifted, and so on."""
    base = base if base is not None else synthesize(month_calls())
    n = 0
    rep = 0
    while True:
        for _, kind, event in base:
            if n >= total:
                return
            yield kind, _shift(event, rep)
            n += 1
        rep += 1


def key_of(event: dict[str, Any]) -> bytes:
    customer = event.get("customer_id")
    return (customer if customer is not None else event["contact_id"]).encode()


def messages(total: int, base: list[tuple[float, str, dict[str, Any]]] | None = None
             ) -> list[tuple[str, bytes, bytes]]:
    """(kind, key, value) messages for `total` events."""
    return [(kind, key_of(e), orjson.dumps(e)) for kind, e in events(total, base)]
