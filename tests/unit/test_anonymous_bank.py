from __future__ import annotations

from datetime import timedelta, timezone

import pytest

from service.domain.events import CallEnded
from service.domain.validation import validate_event
from service.tools.anonymous_bank import ImportReport, convert, parse_utc_offset

IDT = timezone(timedelta(hours=3))
HEADER = ("vru+line\tcall_id\tcustomer_id\tpriority\ttype\tdate\tvru_entry\tvru_exit\tvru_time"
          "\tq_start\tq_exit\tq_time\toutcome\tser_start\tser_exit\tser_time\tserver")


def row(*cols: str) -> str:
    return "\t".join(cols)


SERVED = row("AA0101", "7", "12345", "2", "PS", "990801", "10:00:00", "10:00:10", "10",
             "10:00:10", "10:01:00", "50", "AGENT", "10:01:00", "10:05:00", "240", "MICHAL")


def run(*lines: str) -> tuple[list[dict[str, object]], ImportReport]:
    report = ImportReport()
    return list(convert([HEADER, *lines], IDT, report)), report


def test_served_call() -> None:
    events, report = run(SERVED)
    assert report.rows == 1
    assert report.events == 1
    (e,) = events
    assert e["contact_id"] == "ab-990801-AA0101-7"
    assert e["customer_id"] == "12345"
    assert e["outcome"] == "handled"
    assert e["agent_id"] == "MICHAL"
    assert e["started_at"] == "1999-08-01T10:00:00+03:00"
    assert e["occurred_at"] == "1999-08-01T10:05:00+03:00"
    assert e["wait_seconds"] == 50.0
    assert e["talk_seconds"] == 240.0
    assert e["segment"] == "high"
    assert isinstance(validate_event("call-ended", e), CallEnded)


def test_unidentified_hang_in_vru_is_self_service() -> None:
    events, _ = run(row("AA0204", "1", "0", "0", "NW", "990801", "0:10:10", "0:10:27", "17",
                        "0:00:00", "0:00:00", "0", "HANG", "0:00:00", "0:00:00", "0",
                        "NO_SERVER"))
    (e,) = events
    assert e["customer_id"] is None
    assert e["outcome"] == "self_service"
    assert e["agent_id"] is None
    assert e["occurred_at"] == "1999-08-01T00:10:27+03:00"
    assert e["segment"] == "regular"


def test_hang_in_queue_is_abandoned() -> None:
    events, _ = run(row("AA0204", "2", "55", "1", "PS", "990801", "9:00:00", "9:00:05", "5",
                        "9:00:05", "9:03:05", "180", "HANG", "0:00:00", "0:00:00", "0",
                        "NO_SERVER"))
    assert events[0]["outcome"] == "abandoned"
    assert events[0]["wait_seconds"] == 180.0
    assert events[0]["occurred_at"] == "1999-08-01T09:03:05+03:00"


def test_midnight_crossing_moves_to_next_day() -> None:
    events, _ = run(row("AA0206", "47700", "314386806", "1", "PE", "990802", "23:54:40",
                        "23:54:44", "4", "23:54:44", "23:58:54", "250", "AGENT", "23:58:54",
                        "0:04:25", "331", "AVNI"))
    assert events[0]["occurred_at"] == "1999-08-03T00:04:25+03:00"
    assert isinstance(validate_event("call-ended", events[0]), CallEnded)


def test_agent_without_server_is_still_handled() -> None:
    events, report = run(SERVED.replace("MICHAL", "NO_SERVER"))
    assert events[0]["outcome"] == "handled"
    assert events[0]["agent_id"] == "NO_SERVER"
    assert report.adjusted["handled_without_server"] == 1


def test_small_clock_glitch_is_clamped_not_a_day() -> None:
    events, report = run(row("AA0207", "7039", "17702523", "1", "PS", "990801", "12:04:42",
                             "12:03:15", "-87", "12:03:15", "12:04:56", "101", "AGENT",
                             "12:04:55", "12:05:56", "61", "VICKY"))
    assert events[0]["occurred_at"] == "1999-08-01T12:05:56+03:00"
    assert report.adjusted["clock_step_back_clamped"] == 2
    assert events[0]["ivr_seconds"] == 0.0


def test_messy_rows_are_skipped_and_counted_never_fatal() -> None:
    phantom = SERVED.replace("AGENT", "PHANTOM")
    short = "AA01\t1\t2"
    bad_time = SERVED.replace("10:05:00", "10:5x:00")
    bad_date = SERVED.replace("990801", "99080x")
    dup = SERVED
    events, report = run(SERVED, phantom, short, bad_time, bad_date, dup, "")
    assert len(events) == 1
    assert report.rows == 6
    assert dict(report.skipped) == {
        "phantom": 1, "wrong_column_count": 1, "bad_time": 1, "bad_date": 1,
        "duplicate_call": 1,
    }


@pytest.mark.parametrize(("text", "hours"), [("+03:00", 3), ("-05:30", -5.5), ("+2", 2)])
def test_offsets(text: str, hours: float) -> None:
    assert parse_utc_offset(text).utcoffset(None) == timedelta(hours=hours)
