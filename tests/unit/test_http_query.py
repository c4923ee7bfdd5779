from __future__ import annotations

import pytest

from service.adapters.http import CUSTOMERS, fcr_query, path_id, query_pairs

Q = {"from": "2026-05-04T10:00:00Z", "to": "2026-05-04T12:00:00+00:00"}


def test_valid_query() -> None:
    assert fcr_query(Q) == (1777888800, 1777896000, "all")
    assert fcr_query({**Q, "queue": "sales"}) == (1777888800, 1777896000, "queue:sales")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"to": Q["to"]}, "'from' is required"),
        ({**Q, "from": "2026-05-04T10:30:00Z"}, "on the hour"),
        ({**Q, "to": "yesterday"}, "not an RFC 3339"),
        ({**Q, "to": Q["from"]}, "after"),
        ({**Q, "queue": "a", "channel": "b"}, "at most one"),
        ({**Q, "team": "x"}, "unknown parameter"),
        ({"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "at most"),
        # Offsets that move an edge of the calendar out of it (was a 500).
        ({"from": "0001-01-01T00:00:00+01:00", "to": "0001-01-01T01:00:00+01:00"}, "from 1970"),
        ({"from": "9999-12-31T23:00:00-01:00", "to": "9999-12-31T23:00:00-02:00"}, "from 1970"),
        ({"from": "1969-12-31T23:00:00Z", "to": "1970-01-01T01:00:00Z"}, "from 1970"),
        ({"from": "NaN", "to": "Infinity"}, "not an RFC 3339"),
        ({"from": "1e308", "to": "2"}, "not an RFC 3339"),
        ({"from": "", "to": Q["to"]}, "'from' is required"),
        ({"from": "2026-05-04T10:00:00Z" + "0" * 5000, "to": Q["to"]}, "not an RFC 3339"),
        ({**Q, "queue": ""}, "'queue' must be 1 to 128 characters, got 0"),
        ({**Q, "agent": "a" * 129}, "'agent' must be 1 to 128 characters, got 129"),
        ([*Q.items(), ("from", Q["from"])], "more than once: from"),
        ([*Q.items(), ("queue", "a"), ("queue", "b")], "more than once: queue"),
    ],
)
def test_bad_queries_say_why(params: dict[str, str] | list[tuple[str, str]],
                             message: str) -> None:
    result = fcr_query(params)
    assert isinstance(result, str)
    assert message in result


def test_the_widest_range_and_the_last_hour_are_answered() -> None:
    assert fcr_query({"from": "9999-12-31T22:00:00Z", "to": "9999-12-31T23:00:00Z"}) == (
        253402293600, 253402297200, "all")
    assert fcr_query({**Q, "segment": "é" * 128}) == (1777888800, 1777896000,
                                                      "segment:" + "é" * 128)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a%2Fb", ("a/b",)),
        ("50%25", ("50%",)),
        ("%7Bx%7D", ("{x}",)),
        ("a{b}", ("a{b}",)),
        ("%2E%2E", ("..",)),
        ("a%0Ab%09c%20d", ("a\nb\tc d",)),
        ("%F0%9F%91%A9%E2%80%8D%F0%9F%92%BB", ("\U0001F469\u200d\U0001F4BB",)),
        ("%F0%9F%98%80" * 128, ("\U0001F600" * 128,)),
        ("%F0%9F%98%80" * 129, "ids are 1 to 128 characters, got 129"),
        ("", "ids are 1 to 128 characters, got 0"),
        ("%FF", "not valid UTF-8"),
        ("%C3", "not valid UTF-8"),
        ("a%", "'%' not followed by two hex digits"),
        ("a%2", "'%' not followed by two hex digits"),
        ("%zz", "'%' not followed by two hex digits"),
    ],
)
def test_ids_are_decoded_from_the_raw_path(raw: str, expected: tuple[str] | str) -> None:
    found = path_id(CUSTOMERS + raw, CUSTOMERS)
    if isinstance(expected, tuple):
        assert found == expected
    else:
        assert isinstance(found, str)
        assert expected in found


def test_query_pairs_keep_repeats_and_refuse_what_is_not_utf8() -> None:
    assert query_pairs("a=1&a=2&b=&c=x+y%2B") == [("a", "1"), ("a", "2"), ("b", ""),
                                                   ("c", "x y+")]
    assert "not valid UTF-8" in str(query_pairs("from=%FF"))
    assert "two hex digits" in str(query_pairs("from=100%"))
    assert "too many" in str(query_pairs("&".join(f"p{i}=1" for i in range(21))))


def test_hourly_query() -> None:
    from service.adapters.http_trends import hourly_query, series

    assert hourly_query([]) == (24, "all")
    assert hourly_query([("hours", "168"), ("queue", "billing")]) == (168, "queue:billing")
    for bad in ([("hours", "0")], [("hours", "169")], [("hours", "x")], [("from", "1")],
                [("hours", "2"), ("hours", "3")], [("queue", "a"), ("channel", "b")],
                [("queue", "")], [("queue", "q" * 129)]):
        assert isinstance(hourly_query(bad), str), bad
    assert series([0, 3600], {3600: [4, 1, 2]}) == [
        {"at": "1970-01-01T00:00:00.000Z", "total": 0, "unresolved": 0, "resolved": 0,
         "fcr": None},
        {"at": "1970-01-01T01:00:00.000Z", "total": 4, "unresolved": 1, "resolved": 2,
         "fcr": 0.75}]
