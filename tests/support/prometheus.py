"""A real Prometheus server (Debian's package) on a port of its own, for alert tests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.stack import free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules/cx-stream.rules.yml"


def fast_rules(target: Path) -> Path:
    """The project's rules with their waits shortened (`for` 5s, groups every second)."""
    text = RULES.read_text()
    text = re.sub(r"for: \d+m", "for: 5s", text)
    text = text.replace("interval: 1m", "interval: 1s")
    target.write_text(text)
    return target


class Prometheus:
    def __init__(self, folder: Path, scrape_targets: list[str]) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: deploy/local/stack.sh tools installs it"
        self.port = free_port()
        rules = fast_rules(folder / "rules.yml")
        config = folder / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "cx-stream",
                                "static_configs": [{"targets": scrape_targets}]}],
        }))
        self._log = open(folder / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.get("/-/ready")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((folder / "prometheus.log").read_text()[-3000:]) from None
                time.sleep(0.2)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
            body = resp.read()
        return json.loads(body) if path.startswith("/api/") else body

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/alerts")["data"]["alerts"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self._log.close()
