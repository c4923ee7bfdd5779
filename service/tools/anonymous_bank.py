"""`cx-stream import anonymous-bank FILE.tsv`: Technion "Anonymous Bank" call records as events.

Mapping (one call-ended per call; see docs/importing.md):
- contact_id `ab-<date>-<vru+line>-<call_id>` (call ids repeat across days and lines);
- customer_id the record's id, null when it is 0 (unidentified caller);
- started_at = vru_entry; occurred_at = ser_exit when served, else q_exit when queued, else
  vru_exit; local times at `--utc-offset`; a time earlier than the one before it by more than
  12 hours crossed midnight, a smaller step back is a clock glitch and is clamped;
- outcome AGENT -> handled (also when server is NO_SERVER: the agent is then `NO_SERVER`);
  HANG after queueing -> abandoned; HANG in the voice-response unit -> self_service;
  PHANTOM rows are skipped;
- queue = service type, channel voice, segment from priority (2 high, else regular),
  wait_seconds = q_time, talk_seconds = ser_time.
Rows that cannot be read are skipped and counted by reason; the file is never aborted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson

from service.config import Settings
from service.tools.progress import Progress

COLUMNS = ("vru+line", "call_id", "customer_id", "priority", "type", "date", "vru_entry",
           "vru_exit", "vru_time", "q_start", "q_exit", "q_time", "outcome", "ser_start",
           "ser_exit", "ser_time", "server")
_ABSENT = "0:00:00"


class SkipRow(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ImportReport:
    rows: int = 0
    events: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    adjusted: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        lines = [f"rows read: {self.rows:,}", f"call-ended events: {self.events:,}"]
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"skipped ({reason}): {n:,}")
        for what, n in sorted(self.adjusted.items()):
            lines.append(f"kept, adjusted ({what}): {n:,}")
        return "\n".join(lines)


def _seconds_of_day(text: str) -> int:
    parts = text.strip().split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise SkipRow("bad_time")
    h, m, s = (int(p) for p in parts)
    if h > 23 or m > 59 or s > 59:
        raise SkipRow("bad_time")
    return h * 3600 + m * 60 + s


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SkipRow("bad_duration") from None
    return max(value, 0.0)


def _ts(moment: datetime) -> str:
    return moment.isoformat()


class _Timeline:
    """Places a call's times of day on one absolute timeline, rolling over midnight."""

    def __init__(self, day: datetime, first: int, report: ImportReport) -> None:
        self._day = day
        self._last = first
        self._report = report

    def at(self, seconds_of_day: int) -> int:
        candidate = seconds_of_day + (self._last // 86400) * 86400
        if candidate < self._last - 12 * 3600:
            candidate += 86400  # crossed midnight
        elif candidate < self._last:
            # The records often start service a second before the queue exit; a larger step
            # back is a clock glitch worth reporting. Either way time is kept monotonic.
            if candidate < self._last - 5:
                self._report.adjusted["clock_step_back_clamped"] += 1
            candidate = self._last
        self._last = candidate
        return candidate

    def moment(self, absolute: int) -> datetime:
        return self._day + timedelta(seconds=absolute)


def row_to_event(row: list[str], tz: timezone, report: ImportReport) -> dict[str, Any]:
    """One call-ended event from one record, or SkipRow with the reason."""
    if len(row) != len(COLUMNS):
        raise SkipRow("wrong_column_count")
    rec = dict(zip(COLUMNS, (c.strip() for c in row), strict=True))
    outcome_code = rec["outcome"]
    if outcome_code == "PHANTOM":
        raise SkipRow("phantom")
    if outcome_code not in ("AGENT", "HANG"):
        raise SkipRow("unknown_outcome")
    try:
        day = datetime.strptime(rec["date"], "%y%m%d").replace(tzinfo=tz)
    except ValueError:
        raise SkipRow("bad_date") from None
    if not rec["call_id"] or not rec["vru+line"]:
        raise SkipRow("missing_call_id")
    entry = _seconds_of_day(rec["vru_entry"])
    line = _Timeline(day, entry, report)
    ended = line.at(_seconds_of_day(rec["vru_exit"]))
    queued = rec["q_start"] != _ABSENT
    if queued:
        line.at(_seconds_of_day(rec["q_start"]))
        ended = line.at(_seconds_of_day(rec["q_exit"]))
    served = outcome_code == "AGENT" and rec["ser_start"] != _ABSENT
    if served:
        line.at(_seconds_of_day(rec["ser_start"]))
        ended = line.at(_seconds_of_day(rec["ser_exit"]))
    if outcome_code == "AGENT":
        outcome = "handled"
        agent: str | None = rec["server"] or "NO_SERVER"
        if agent == "NO_SERVER":
            report.adjusted["handled_without_server"] += 1
    else:
        outcome = "abandoned" if queued else "self_service"
        agent = None
    customer = rec["customer_id"]
    if not customer.isdigit():
        raise SkipRow("bad_customer_id")
    contact_id = f"ab-{rec['date']}-{rec['vru+line']}-{rec['call_id']}"
    return {
        "event_id": f"{contact_id}-ended",
        "occurred_at": _ts(line.moment(ended)),
        "contact_id": contact_id,
        "customer_id": None if int(customer) == 0 else customer,
        "started_at": _ts(line.moment(entry)),
        "channel": "voice",
        "queue": rec["type"] or "unknown",
        "outcome": outcome,
        "agent_id": agent,
        "reason": None,
        "segment": "high" if rec["priority"] == "2" else "regular",
        "wait_seconds": _duration(rec["q_time"]) if queued else 0.0,
        "hold_seconds": 0.0,
        "talk_seconds": _duration(rec["ser_time"]) if served else 0.0,
        "ivr_seconds": _duration(rec["vru_time"]),
        "priority": rec["priority"],
        "source_system": "anonymous-bank",
    }


def parse_utc_offset(text: str) -> timezone:
    sign = -1 if text.startswith("-") else 1
    hours, _, minutes = text.lstrip("+-").partition(":")
    if not hours.isdigit() or (minutes and not minutes.isdigit()):
        raise ValueError(f"expected an offset such as +03:00, got {text!r}")
    return timezone(sign * timedelta(hours=int(hours), minutes=int(minutes or 0)))


def convert(lines: Iterable[str], tz: timezone, report: ImportReport) -> Iterator[dict[str, Any]]:
    """call-ended events for the file's rows (header skipped), counting what was skipped."""
    seen: set[str] = set()
    for number, line in enumerate(lines):
        if number == 0 and line.startswith("vru"):
            continue
        if not line.strip():
            continue
        report.rows += 1
        try:
            event = row_to_event(line.rstrip("\r\n").split("\t"), tz, report)
        except SkipRow as skip:
            report.skipped[skip.reason] += 1
            continue
        if event["contact_id"] in seen:
            report.skipped["duplicate_call"] += 1
            continue
        seen.add(event["contact_id"])
        report.events += 1
        yield event


def run_import(settings: Settings, args: argparse.Namespace) -> int:
    try:
        tz = parse_utc_offset(args.utc_offset)
    except ValueError as exc:
        print(f"cx-stream import: --utc-offset: {exc}", file=sys.stderr)
        return 2
    report = ImportReport()
    try:
        with open(args.file, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError as exc:
        print(f"cx-stream import: {exc}", file=sys.stderr)
        return 1
    bar = Progress(len(lines) - 1, "import", enabled=not args.quiet)
    if args.out:
        with open(args.out, "wb") as out:
            for event in convert(lines, tz, report):
                out.write(orjson.dumps({"topic": "call-ended", "event": event}) + b"\n")
                bar.advance()
    else:
        asyncio.run(_publish(settings, convert(lines, tz, report), bar))
    bar.finish()
    print(report.summary())
    print(f"imported at {datetime.now(UTC).isoformat(timespec='seconds')}")
    return 0


async def _publish(settings: Settings, events: Iterable[dict[str, Any]], bar: Progress) -> None:
    from service.adapters.kafka_publish import EventPublisher

    publisher = EventPublisher(settings)
    await publisher.start()
    try:
        for event in events:
            await publisher.send_event(settings.topic_call_ended, event)
            bar.advance()
    finally:
        await publisher.close()
