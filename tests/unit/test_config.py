from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.config import VARIABLES, ConfigError, load_settings
from service.domain.durations import parse_duration

DOC = Path(__file__).resolve().parents[2] / "docs/configuration.md"


def test_defaults_load() -> None:
    s = load_settings({})
    assert s.input_topics == ("call-ended", "transfer", "survey-answered")
    assert s.http_port == 6066
    assert s.max_event_bytes == 65536
    assert s.batch_max_wait == pytest.approx(0.05)
    assert s.topic_kinds["transfer"] == "transfer"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CX_HTTP_PORT": "abc"}, "CX_HTTP_PORT"),
        ({"CX_HTTP_PORT": "70000"}, "CX_HTTP_PORT"),
        ({"CX_BATCH_MAX_WAIT": "soon"}, "CX_BATCH_MAX_WAIT"),
        ({"CX_BATCH_MAX_WAIT": "0s"}, "CX_BATCH_MAX_WAIT"),
        ({"CX_REDIS_URL": "localhost:6379"}, "CX_REDIS_URL"),
        ({"CX_KAFKA_BOOTSTRAP": "localhost"}, "CX_KAFKA_BOOTSTRAP"),
        ({"CX_TOPIC_TRANSFER": "bad topic"}, "CX_TOPIC_TRANSFER"),
        ({"CX_LOG_LEVEL": "loud"}, "CX_LOG_LEVEL"),
        ({"CX_TOPIC_TRANSFER": "call-ended"}, "CX_TOPIC_"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=f"^{named}"):
        load_settings(env)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("72h", 259200.0), ("7d", 604800.0), ("500ms", 0.5), ("1.5", 1.5), ("2w", 1209600.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7 days", "-1s", "1e3s", "h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_configuration_doc_lists_every_variable_with_its_default() -> None:
    rows = {}
    service_table = DOC.read_text().split("\n## ")[0]  # the scripts' own table follows
    for line in service_table.splitlines():
        m = re.match(r"^\|\s*`(CX_[A-Z0-9_]+)`\s*\|\s*`([^`]*)`\s*\|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    documented = {v.name: v.default or "\"\"" for v in VARIABLES}
    assert rows == documented


def test_policy_from_settings() -> None:
    from service.config import policy_of

    policy = policy_of(load_settings({
        "CX_REPEAT_WINDOW": "72h",
        "CX_QUEUE_POLICIES": '{"sales": {"repeat_window": "24h", "transfer_breaks_fcr": false}}',
        "CX_PERCEPTION_SEGMENT_BASELINES": '{"gold": 80}',
    }))
    assert policy.default.repeat_window == 72 * 3600
    assert policy.allowed_lateness == 72 * 3600  # defaults to the window
    assert policy.for_queue("sales").repeat_window == 24 * 3600
    assert policy.for_queue("sales").transfer_breaks_fcr is False
    assert policy.for_queue("billing").transfer_breaks_fcr is True
    assert policy.perception.baseline_for("gold") == 80


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CX_QUEUE_POLICIES": "[1]"}, "CX_QUEUE_POLICIES"),
        ({"CX_QUEUE_POLICIES": '{"s": {"window": "1h"}}'}, "CX_QUEUE_POLICIES"),
        ({"CX_QUEUE_POLICIES": '{"s": {"transfer_breaks_fcr": "no"}}'}, "CX_QUEUE_POLICIES"),
        ({"CX_TRANSFER_BREAKS_FCR": "maybe"}, "CX_TRANSFER_BREAKS_FCR"),
        ({"CX_AT_RISK_BELOW": "140"}, "CX_AT_RISK_BELOW"),
        ({"CX_AT_RISK_BELOW": "60", "CX_AT_RISK_RECOVER_AT": "50"}, "CX_AT_RISK_RECOVER_AT"),
    ],
)
def test_bad_policies_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=f"^{named}"):
        load_settings(env)
