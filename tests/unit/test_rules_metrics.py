"""Every metric the alert rules name is one the worker exports."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from service.adapters.business_metrics import BusinessMetrics
from service.adapters.metrics import PipelineMetrics
from service.domain.policy import Policy

ROOT = Path(__file__).resolve().parents[2]


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    PipelineMetrics(["call-ended"], registry)
    BusinessMetrics(registry, windows=(("1h", 3600.0),), agent_labels=0, policy=Policy())
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def test_rules_only_use_exported_metrics() -> None:
    text = (ROOT / "deploy/prometheus/rules/cx-stream.rules.yml").read_text()
    recorded = set(re.findall(r"record: (\S+)", text))
    used = set(re.findall(r"(?<![:\w])(cx_[a-z_]+)(?![:\w])", text)) - recorded
    assert used, "the rules name no metric"
    assert used <= exported_names(), used - exported_names()
