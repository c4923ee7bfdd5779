"""The provisioned Grafana dashboard is valid and only queries metrics the service exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

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


def test_every_query_names_an_exported_or_recorded_metric() -> None:
    recorded = set(re.findall(r"record: (\S+)", RULES.read_text()))
    known = exported_names() | recorded | {"up"}
    queries = [t["expr"] for p in _panels() for t in p.get("targets", [])]
    assert len(queries) > 15
    for expr in queries:
        names = set(re.findall(r"[a-z_:][a-z0-9_:]*(?=\{|\[|\)|\s|$)", expr))
        metrics = {n for n in names if n.startswith(("cx_", "queue:", "cx:")) or n == "up"}
        assert metrics, expr
        assert metrics <= known, (expr, metrics - known)
        assert all(p.get("datasource", {}).get("uid") == "cx-prometheus"
                   for p in _panels() if p["type"] != "row")
