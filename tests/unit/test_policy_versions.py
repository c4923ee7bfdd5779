"""Policy versions: naming, recorded rules, and the rebuild's progress line."""

from __future__ import annotations

import pytest

from service.adapters.policy_versions import differences, policy_from_dict, policy_to_dict
from service.config import ConfigError, load_settings, policy_of
from service.rebuild import progress_line
from service.service_layer.ingest import BatchOutcome


def test_version_1_keeps_the_key_prefix_and_group_later_versions_get_their_own() -> None:
    first = load_settings({"CX_KEY_PREFIX": "acme", "CX_GROUP_ID": "cx"})
    assert (first.state_prefix, first.worker_group_id) == ("acme", "cx")
    later = load_settings({"CX_KEY_PREFIX": "acme", "CX_GROUP_ID": "cx",
                           "CX_POLICY_VERSION": "02"})
    assert later.policy_version == "2"
    assert (later.state_prefix, later.worker_group_id) == ("acme:v2", "cx-v2")


@pytest.mark.parametrize("text", ["abc", "0", "-1", "1.5", ""])
def test_policy_version_is_a_whole_number_from_1(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^CX_POLICY_VERSION"):
        load_settings({"CX_POLICY_VERSION": text})


def test_recorded_rules_give_back_the_same_policy() -> None:
    policy = policy_of(load_settings({
        "CX_POLICY_VERSION": "3",
        "CX_REPEAT_WINDOW": "72h",
        "CX_QUEUE_POLICIES": '{"sales": {"repeat_window": "24h", "transfer_breaks_fcr": false}}',
        "CX_PERCEPTION_SEGMENT_BASELINES": '{"gold": 80}',
        "CX_AT_RISK_BELOW": "35",
    }))
    assert policy_from_dict(policy_to_dict(policy), "3") == policy


def test_differences_name_each_changed_rule() -> None:
    old = policy_to_dict(policy_of(load_settings({})))
    new = policy_to_dict(policy_of(load_settings({
        "CX_REPEAT_WINDOW": "3d", "CX_TRANSFER_BREAKS_FCR": "false"})))
    assert differences(old, new) == [
        "allowed_lateness: 604800.0 -> 259200.0",
        "default.repeat_window: 604800.0 -> 259200.0",
        "default.transfer_breaks_fcr: True -> False",
    ]
    assert differences(old, old) == []


def test_progress_line_reports_share_rate_and_eta() -> None:
    outcome = BatchOutcome(applied=2_400, duplicates=100, invalid=3, too_late=1)
    line = progress_line("2", 2_500, 10_000, 5.0, outcome)
    assert line.startswith("rebuild v2: 2,500 of 10,000 messages (25.0%), 500/s, ETA 0:00:15;")
    assert "applied 2,400, duplicates 100, invalid 3, too late 1" in line
    assert "live" not in line
    done = progress_line("2", 10_000, 10_000, 3725.0, outcome, live_lag=42)
    assert "(100.0%)" in done
    assert "ETA 0:00:00" in done
    assert done.endswith("catching up with live traffic: 42 messages behind")
    assert "ETA 1:02:05" in progress_line("2", 1, 2, 3725.0, outcome)
