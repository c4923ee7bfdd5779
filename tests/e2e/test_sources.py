"""Platform records end to end: Amazon Connect contact records and Genesys Cloud conversation
detail records into raw topics, `cx-stream map` (one process per platform) maps them into the
input topics, a real worker applies them, and the verdicts are those worked by hand in
tests/support/platforms.py. Unmappable records are dead-lettered with a reason naming the
field, and mapping the same records again only gives duplicates the worker drops."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from service.adapters.kafka_admin import ensure_topics
from service.config import load_settings
from tests.support.platforms import EXPECTED, amazon_connect_records, genesys_cloud_records
from tests.support.stack import (
    ROOT,
    Namespace,
    Stack,
    Worker,
    committed_offsets,
    end_offsets,
    free_port,
    produce,
    read_topic,
    wait_until,
)

pytestmark = pytest.mark.e2e
SALT = "e2e-hash-salt-0123456789"
RAW_PARTITIONS = 2


async def _create_raw_topics(bootstrap: str, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, RAW_PARTITIONS, 1) for t in topics])
    finally:
        await admin.close()


class MapProcess:
    """A `cx-stream map` subprocess with its metrics port."""

    def __init__(self, ns: Namespace, mapping: str, topic: str, log: Path) -> None:
        self.port = free_port()
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.log_path = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "map", "--mapping", mapping, "--topic", topic],
            env=ns.env(CX_MAP_HASH_SALT=SALT, CX_MAP_HTTP_PORT=str(self.port)),
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)

    def metric(self, name: str, **labels: str) -> float:
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                        timeout=5) as resp:
                body = resp.read().decode()
        except OSError:
            return -1.0
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def _verdict(worker: Worker, contact_id: str) -> tuple[Any, ...] | None:
    status, body = worker.get(f"/api/v1/contacts/{contact_id}")
    if status != 200:
        return None
    view = json.loads(body)
    return (view["outcome"], view["is_repeat"], view["repeat_of"], view["transfers"],
            view["resolution"], frozenset(view["resolution_reasons"]))


def test_platform_records_mapped_applied_and_judged(stack: Stack, tmp_path: Path) -> None:
    ns = stack.namespace()
    asyncio.run(ensure_topics(load_settings(ns.settings_env())))
    raw = {"amazon_connect": ns.topic("connect-raw"), "genesys_cloud": ns.topic("genesys-raw")}
    asyncio.run(_create_raw_topics(stack.kafka_bootstrap, list(raw.values())))
    records = {"amazon_connect": amazon_connect_records(),
               "genesys_cloud": genesys_cloud_records()}
    asyncio.run(produce(stack.kafka_bootstrap, [
        (raw["amazon_connect"], r["ContactId"].encode(), orjson.dumps(r))
        for r in records["amazon_connect"]] + [
        (raw["genesys_cloud"], r["conversationId"].encode(), orjson.dumps(r))
        for r in records["genesys_cloud"]]))

    worker = Worker(ns, tmp_path / "worker.log")
    mappers = {source: MapProcess(ns, source, topic, tmp_path / f"{source}.log")
               for source, topic in raw.items()}
    try:
        for source, mapper in mappers.items():
            wait_until(lambda m=mapper, s=source: m.metric(
                "cx_map_records_total", source=s) == len(records[s]), timeout=60,
                what=f"{source}: every raw record mapped")
            # At least once: the offsets are committed once the events are acknowledged.
            wait_until(lambda s=source: asyncio.run(committed_offsets(
                stack.kafka_bootstrap, f"{ns.name}-map-{s}", [raw[s]], RAW_PARTITIONS))
                == asyncio.run(end_offsets(stack.kafka_bootstrap, [raw[s]], RAW_PARTITIONS)),
                timeout=30, what=f"{source}: offsets committed")
        connect, genesys = mappers["amazon_connect"], mappers["genesys_cloud"]
        assert connect.metric("cx_map_events_total", source="amazon_connect",
                              kind="call-ended") == 6
        assert connect.metric("cx_map_events_total", source="amazon_connect",
                              kind="transfer") == 1
        assert connect.metric("cx_map_records_skipped_total", source="amazon_connect") == 1
        assert genesys.metric("cx_map_events_total", source="genesys_cloud",
                              kind="survey-answered") == 1
        assert connect.metric("cx_map_dead_letters_total", source="amazon_connect",
                              reason="bad_timestamp") == 1
        assert genesys.metric("cx_map_dead_letters_total", source="genesys_cloud",
                              reason="invalid_value") == 1

        worker.wait_ready()
        for contact_id, expected in EXPECTED.items():
            wait_until(lambda c=contact_id, e=expected: _verdict(worker, c) == e, timeout=60,
                       what=f"contact {contact_id}: {expected} "
                            f"(last seen {_verdict(worker, contact_id)})")
        # The legs of a contact are one contact: no view of their own.
        assert worker.get("/api/v1/contacts/A2")[0] == 404
        assert worker.get("/api/v1/contacts/A4")[0] == 404
        assert json.loads(worker.get("/api/v1/contacts/A3")[1])["agent_id"] == "carol"

        dead = asyncio.run(read_topic(stack.kafka_bootstrap, ns.topic("dead-letter"), 2))
        letters = {orjson.loads(d.value)["topic"]: orjson.loads(d.value) for d in dead}
        assert set(letters) == set(raw.values())
        connect_letter = letters[raw["amazon_connect"]]
        assert connect_letter["reason"] == "bad_timestamp"
        assert "occurred_at from DisconnectTimestamp" in connect_letter["message"]
        genesys_letter = letters[raw["genesys_cloud"]]
        assert genesys_letter["reason"] == "invalid_value"
        assert ".channel from" in genesys_letter["message"]

        for mapper in mappers.values():
            assert mapper.stop() == 0, mapper.logs()

        # A JSONL export of the same records, mapped again: same ids, duplicates dropped.
        duplicates = {kind: worker.metric("cx_events_duplicate_total", topic=ns.topic(kind))
                      for kind in ("call-ended", "transfer", "survey-answered")}
        export = tmp_path / "genesys.jsonl"
        export.write_bytes(b"".join(orjson.dumps(r) + b"\n"
                                    for r in records["genesys_cloud"]))
        again = subprocess.run(
            [sys.executable, "-m", "service", "map", "--mapping", "genesys_cloud",
             "--from-file", str(export)], env=ns.env(CX_MAP_HASH_SALT=SALT),
            capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert again.returncode == 0, again.stderr
        assert "5 records: 6 events, 1 dead letters" in again.stderr
        remapped = {"call-ended": 4, "transfer": 1, "survey-answered": 1}
        wait_until(lambda: {kind: worker.metric("cx_events_duplicate_total",
                                                topic=ns.topic(kind)) - duplicates[kind]
                            for kind in remapped} == remapped, timeout=60,
                   what=f"the re-mapped events dropped as duplicates: {remapped}")
        assert worker.metric("cx_events_applied_total", topic=ns.topic("call-ended")) == 10
        assert _verdict(worker, "G1") == EXPECTED["G1"]
    finally:
        for mapper in mappers.values():
            mapper.stop()
        worker.stop()
