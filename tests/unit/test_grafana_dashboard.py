"""The provisioned Grafana dashboard is valid and only queries metrics the service exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from service.adapters.drivers_gauges import DriverGauges
from service.domain.costs import ContactCosts
from tests.unit.test_rules_metrics import exported_names

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/cx-stream.json"
RULES = ROOT / "deploy/prometheus/rules/cx-stream.rules.yml"


def _panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "cx-stream"
    return list(dashboard["panels"])


def test_layout_has_the_wallboard_row_first_and_no_overlaps() -> None:
    panels = _panels()
    assert panels[0]["type"] == "row"
    assert panels[0]["title"] == "Wallboard"
    stats = [p["title"] for p in panels if p["type"] == "stat"]
    assert len(stats) == 6
    cells = set()
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))
    assert len({p["id"] for p in panels}) == len(panels)


def _driver_and_cost_names() -> set[str]:
    """The repeat-driver and cost gauges (registered when the worker runs with them)."""
    registry = CollectorRegistry()
    DriverGauges(registry, ContactCosts("USD", {"voice": 6500}), 0.8)
    return {family.name for family in registry.collect()}


def test_every_query_names_an_exported_or_recorded_metric() -> None:
    recorded = set(re.findall(r"record: (\S+)", RULES.read_text()))
    known = exported_names() | _driver_and_cost_names() | recorded | {"up"}
    queries = [t["expr"] for p in _panels() for t in p.get("targets", [])]
    assert len(queries) > 15
    for expr in queries:
        names = set(re.findall(r"[a-z_:][a-z0-9_:]*(?=\{|\[|\)|\s|$)", expr))
        metrics = {n for n in names if n.startswith(("cx_", "queue:", "cx:")) or n == "up"}
        assert metrics, expr
        assert metrics <= known, (expr, metrics - known)
        assert all(p.get("datasource", {}).get("uid") == "cx-prometheus"
                   for p in _panels() if p["type"] != "row")


def test_variables_for_queue_channel_and_segment_filter_the_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert sorted(variables) == ["channel", "queue", "segment"]
    for name, v in variables.items():
        assert v["allValue"] == ".+"  # "All" is every queue, never the centre's queue=""
        assert f"{name}!=" in v["definition"]
    queries = [t["expr"] for p in _panels() for t in p.get("targets", [])]
    for name in variables:
        assert any(f'{name}=~"${name}"' in q for q in queries), name
    titles = [p["title"] for p in _panels()]
    assert "FCR (24h) against a week earlier and the target" in titles
    assert any(q.endswith("offset 7d)") for q in queries)
    assert any("cx_repeat_driver_unresolved" in q for q in queries)
    assert any("cx_repeat_cost" in q for q in queries)
