"""`cx-stream rebuild` on the real stack: a new repeat window without mixed figures.

A worker runs with repeat window W1 and serves its figures. A rebuild replays the same input
into policy version 2 with W2 while the worker keeps running; readers see W1 figures until
the switch and W2 figures right after (within CX_POLICY_CACHE, 1 s: how long a reader keeps
the active version it read), never a mix, and the W2 figures equal those of a from-scratch
run with W2. Then the worker is restarted as version 2 and carries on from the
rebuild's offsets, and the old version is dropped.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.adapters.kafka_admin import ensure_topics
from service.adapters.redis_state import RedisState, connect
from service.config import load_settings
from service.tools.traffic import TrafficModel
from tests.support.engine_state import views_and_counters
from tests.support.stack import ROOT, Namespace, Stack, Worker, free_port, produce, wait_until

pytestmark = pytest.mark.e2e
PARTITIONS = 6
W1 = {"CX_REPEAT_WINDOW": "24h", "CX_ALLOWED_LATENESS": "3d"}
W2 = {"CX_REPEAT_WINDOW": "2h", "CX_ALLOWED_LATENESS": "3d", "CX_POLICY_VERSION": "2"}
BUSINESS = ("cx_window_contacts", "cx_fcr_provisional_ratio", "cx_fcr_final_ratio",
            "cx_repeat_contact_ratio", "cx_transfer_ratio", "cx_abandon_ratio",
            "cx_csat_average", "cx_nps", "cx_customers_at_risk", "cx_perception_customers",
            "cx_data_quality_ratio")
START = datetime.fromisoformat("2026-09-07T00:00:00+00:00").timestamp()
FCR = "/api/v1/fcr?from=2026-09-07T00:00:00Z&to=2026-09-10T00:00:00Z"


def _applied(stack: Stack, prefix: str) -> int:
    """Events applied into the state under the key prefix, over all partitions."""

    async def read() -> int:
        store = RedisState(connect(stack.redis_url), prefix, state_ttl=60, counter_ttl=60,
                           contact_ttl=60)
        try:
            clocks = await store.read_clocks(PARTITIONS)
            return sum(sum(c.applied.values()) for c in clocks.values())
        finally:
            await store.client.aclose()

    return asyncio.run(read())


def _snapshot(stack: Stack, prefix: str) -> tuple[dict[str, Any], Counter[str]]:
    """Every contact's latest view (without its version number) and every counter."""

    async def read() -> tuple[dict[str, Any], Counter[str]]:
        client = connect(stack.redis_url)
        try:
            return await views_and_counters(client, prefix)
        finally:
            await client.aclose()

    return asyncio.run(read())


def _keys(stack: Stack, pattern: str) -> int:
    async def count() -> int:
        client = connect(stack.redis_url)
        try:
            return len([k async for k in client.scan_iter(match=pattern, count=1000)])
        finally:
            await client.aclose()

    return asyncio.run(count())


def _business(worker: Worker) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {k: v for k, v in worker.metrics().items() if k[0] in BUSINESS}


def _without_bands(gauges: dict[Any, float]) -> dict[Any, float]:
    return {k: v for k, v in gauges.items() if k[0] != "cx_perception_customers"}


def _band_total(gauges: dict[Any, float]) -> float:
    return sum(v for k, v in gauges.items() if k[0] == "cx_perception_customers")


def _versions_in(gauges: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> set[str]:
    return {dict(labels)["policy_version"] for _, labels in gauges}


def _fresh_business(worker: Worker, version: str) -> dict[Any, float]:
    """The business gauges of a refresh that started after this call, of `version`."""
    refreshes = worker.metric("cx_metrics_refresh_seconds_count")
    wait_until(lambda: worker.metric("cx_metrics_refresh_seconds_count") >= refreshes + 2,
               timeout=60, what="two more refreshes of the business gauges")
    gauges = _business(worker)
    assert _versions_in(gauges) == {version}
    return gauges


def _customer(worker: Worker, customer: str) -> dict[str, Any]:
    """The customer's context, without what depends on how events were batched: the
    contacts' version numbers (they count the corrections published) and the last at-risk
    episode as its alerts were published (an alert says what the customer's settle found)."""
    status, body = worker.get(f"/api/v1/customers/{customer}")
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    for contact in answer["recent_contacts"]:
        contact.pop("version")
    if answer.get("history") is not None:
        answer["history"].pop("last_at_risk")
    return answer


def _fcr(worker: Worker) -> dict[str, Any]:
    status, body = worker.get(FCR)
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    return answer


class Rebuild:
    """A `cx-stream rebuild` subprocess; its output is kept."""

    def __init__(self, ns: Namespace, *args: str, progress_every: str = "0.5",
                 **env: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "rebuild", "--progress-every", progress_every,
             *args],
            env=ns.env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
            text=True)

    def wait(self, timeout: float = 120) -> tuple[int, str]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            raise AssertionError(f"rebuild still running after {timeout}s:\n{out}") from None
        return self.proc.returncode, out


class Watcher(threading.Thread):
    """Reads the FCR answer and the business gauges of a worker over and over."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(daemon=True)
        self.worker = worker
        self.seen: list[tuple[dict[str, Any], dict[Any, float]]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.seen.append((_fcr(self.worker), _business(self.worker)))
            time.sleep(0.1)

    def stop(self) -> list[tuple[dict[str, Any], dict[Any, float]]]:
        self.done.set()
        self.join(30)
        return self.seen


def test_rebuild_switches_readers_from_w1_to_w2_figures_at_once(
    stack: Stack, tmp_path: Path
) -> None:
    workers: list[Worker] = []
    try:
        _scenario(stack, tmp_path, workers)
    finally:  # a failed check must not leave a worker running
        for worker in workers:
            if worker.proc.poll() is None:
                worker.kill()


def _scenario(stack: Stack, tmp_path: Path, workers: list[Worker]) -> None:
    def start(name: str, **env: str) -> Worker:
        worker = Worker(ns, tmp_path / name, **env)
        workers.append(worker)
        return worker

    ns = stack.namespace()
    asyncio.run(ensure_topics(load_settings(ns.settings_env())))
    model = TrafficModel(start=START, contacts_per_second=0.01, customers=120, seed=5,
                         duplicate_share=0.0, malformed_share=0.0)
    first = model.advance(START + 1.5 * 86400)
    second = model.advance(START + 2 * 86400)
    third = model.advance(START + 2.25 * 86400)
    assert len(first) > 1000
    assert second
    assert third

    def publish(messages: list[Any]) -> None:
        asyncio.run(produce(stack.kafka_bootstrap,
                            [(ns.topic(m.kind), m.key, m.value) for m in messages]))

    old = start("w1.log", **W1)
    fresh = None
    try:
        old.wait_ready()
        publish(first)
        wait_until(lambda: _applied(stack, ns.name) == len(first), timeout=120,
                   what="the first events applied by the W1 worker")

        # A rebuild with the served version is refused.
        code, out = Rebuild(ns, **W1).wait()
        assert code == 2, out
        assert "readers serve already" in out

        # 1. Build version 2 without switching, while the W1 worker runs and serves (its
        # gauges computed from the applied events first).
        _fresh_business(old, "1")
        watcher = Watcher(old)
        watcher.start()
        code, out = Rebuild(ns, "--no-switch", progress_every="0", CX_BATCH_MAX_EVENTS="200",
                            **W2).wait()
        during = watcher.stop()
        assert code == 0, out
        assert f"replaying {len(first):,} messages" in out, out
        progress = re.findall(r"v2: ([\d,]+) of ([\d,]+) messages .* ETA (\d+:\d\d:\d\d)", out)
        done = [int(d.replace(",", "")) for d, _, _ in progress]
        assert len(done) >= 3, out  # reported as it went, not only at the end
        assert done == sorted(done)
        assert done[0] < len(first) == done[-1]
        assert {total for _, total, _ in progress} == {f"{len(first):,}"}
        assert "readers still serve version 1" in out
        assert _applied(stack, f"{ns.name}:v2") == len(first)
        assert during
        assert all(answer["policy_version"] == "1" for answer, _ in during)
        assert all(_versions_in(gauges) == {"1"} for _, gauges in during)

        # A worker of version 2 with the old rules is refused: one version, one rule set.
        mixed = start("mixed.log", **{**W1, "CX_POLICY_VERSION": "2"})
        assert mixed.proc.wait(60) == 2
        mixed.stop()
        assert "first run with other rules" in mixed.logs()

        # 2. More live traffic for the W1 worker; then the rebuild resumes and switches.
        publish(second)
        total = len(first) + len(second)
        wait_until(lambda: _applied(stack, ns.name) == total, timeout=120,
                   what="the second events applied by the W1 worker")
        w1_fcr = _fcr(old)
        w1_gauges = _fresh_business(old, "1")
        watcher = Watcher(old)
        watcher.start()
        rebuild = Rebuild(ns, **W2)
        code, out = rebuild.wait()
        assert code == 0, out
        assert f"replaying {len(second):,} messages" in out, out  # resumed, not restarted
        assert "readers switched from version 1 to 2" in out, out
        # The worker keeps the active version it read for up to CX_POLICY_CACHE (1 s): the
        # first answers after the switch may still be version 1's, none of the requests
        # sent more than that after it (the switch came before the rebuild ended).
        switched = time.monotonic()
        polled: list[tuple[float, dict[str, Any]]] = []
        while not polled or polled[-1][0] - switched <= 1.0:
            polled.append((time.monotonic(), _fcr(old)))
        assert all(answer["policy_version"] == "2" for sent, answer in polled
                   if sent - switched > 1.0)
        versions = [answer["policy_version"] for _, answer in polled]
        assert versions == sorted(versions)  # never back to 1
        after_switch = polled[-1][1]
        w2_gauges = _fresh_business(old, "2")
        seen = watcher.stop()
        assert _applied(stack, f"{ns.name}:v2") == total
        assert _applied(stack, ns.name) == total  # the W1 worker kept its own state

        # 3. The same events from scratch with W2, in a namespace of their own.
        ns.http_port = free_port()
        fresh_prefix = f"{ns.name}-fresh"
        fresh = start("fresh.log", CX_KEY_PREFIX=fresh_prefix,
                       CX_GROUP_ID=fresh_prefix,
                       CX_TOPIC_DEAD_LETTER=f"{fresh_prefix}-dead-letter",
                       CX_TOPIC_CONTACT_ENRICHED=f"{fresh_prefix}-contact-enriched",
                       CX_TOPIC_CUSTOMER_ALERTS=f"{fresh_prefix}-customer-alerts", **W2)
        fresh.wait_ready()
        wait_until(lambda: _applied(stack, f"{fresh_prefix}:v2") == total, timeout=120,
                   what="the from-scratch W2 run")
        scratch_fcr = _fcr(fresh)
        scratch_gauges = _fresh_business(fresh, "2")
        assert _snapshot(stack, f"{ns.name}:v2") == _snapshot(stack, f"{fresh_prefix}:v2")
        customers = sorted({c for m in second if m.kind == "call-ended"
                            and (c := orjson.loads(m.value)["customer_id"])})[:5]
        assert len(customers) == 5
        for customer in customers:
            assert _customer(old, customer) == _customer(fresh, customer)
        assert fresh.stop() == 0, fresh.logs()
        fresh = None
    finally:
        if fresh is not None:
            fresh.stop()

    # The figures differ between the windows (so the checks below can tell them apart) ...
    assert w1_fcr["policy_version"] == "1"
    assert after_switch["policy_version"] == "2"
    assert w1_fcr["unresolved"] > after_switch["unresolved"]
    assert w1_gauges != w2_gauges
    # ... right after the switch the readers serve exactly the from-scratch W2 figures ...
    assert after_switch == scratch_fcr
    # cx_perception_customers counts customers by their band "as of their last change": the
    # score drifts with event time, so the band depends on the watermark at which each customer
    # was last settled, which depends on how the events were batched. Only its total is exact.
    assert _without_bands(w2_gauges) == _without_bands(scratch_gauges)
    assert _band_total(w2_gauges) == _band_total(scratch_gauges) > 0
    # ... and no reader ever saw a mix: each answer is all W1 or all W2, and once W2, never
    # W1 again.
    answers, scrapes = [], []
    for answer, gauges in seen:
        assert answer == (w1_fcr if answer["policy_version"] == "1" else after_switch)
        (version,) = _versions_in(gauges)  # one version per scrape
        assert gauges == (w1_gauges if version == "1" else w2_gauges)
        answers.append(answer["policy_version"])
        scrapes.append(version)
    for order in (answers, scrapes):
        assert order == sorted(order), order
        assert set(order) == {"1", "2"}

    # 4. Hand-over: the worker restarts as version 2 and continues from the rebuild.
    assert old.stop() == 0, old.logs()
    new = start("w2.log", **W2)
    try:
        new.wait_ready()
        publish(third)
        wait_until(lambda: _applied(stack, f"{ns.name}:v2") == total + len(third),
                   timeout=120, what="the third events applied by the version-2 worker")
        assert _applied(stack, ns.name) == total  # nothing written to version 1 any more

        def applied() -> float:
            return sum(new.metric("cx_events_applied_total", topic=ns.topic(k))
                       for k in ("call-ended", "transfer", "survey-answered"))

        # The worker counts a batch once its outputs are published, after the commit that
        # moved the clock: wait for the count of the last batch.
        wait_until(lambda: applied() >= len(third), timeout=60,
                   what="the version-2 worker counting the third events")
        assert applied() == len(third)
        assert sum(new.metric("cx_events_duplicate_total", topic=ns.topic(k))
                   for k in ("call-ended", "transfer", "survey-answered")) == 0  # no re-read
        later = _fcr(new)
        assert later["policy_version"] == "2"
        assert later["total"] > after_switch["total"]
        assert new.metric("cx_policy_version", role="writing") == 2
        wait_until(lambda: new.metric("cx_policy_version", role="serving") == 2, timeout=30)

        # 5. The old version goes; the served one cannot.
        code, out = Rebuild(ns, "--drop-version", "2", **W2).wait()
        assert code == 2, out
        assert "readers serve" in out
        assert _keys(stack, f"{ns.name}:{{p*}}:*") > 0
        code, out = Rebuild(ns, "--drop-version", "1", **W2).wait()
        assert code == 0, out
        assert _keys(stack, f"{ns.name}:{{p*}}:*") == 0
        assert _keys(stack, f"{ns.name}:contact:*") == 0
        assert _keys(stack, f"{ns.name}:v2:{{p*}}:*") > 0
        assert _fcr(new) == later
    finally:
        assert new.stop() == 0, new.logs()


def test_rebuild_with_two_processes_stores_what_one_process_stores(
    stack: Stack, tmp_path: Path
) -> None:
    """`--processes 2` splits the partitions over two replaying processes; the state, views
    and counters of the new version are the same as with one process."""
    ns = stack.namespace()
    asyncio.run(ensure_topics(load_settings(ns.settings_env())))
    model = TrafficModel(start=START, contacts_per_second=0.01, customers=120, seed=11,
                         duplicate_share=0.0, malformed_share=0.0)
    messages = model.advance(START + 86400)
    assert len(messages) > 700
    asyncio.run(produce(stack.kafka_bootstrap,
                        [(ns.topic(m.kind), m.key, m.value) for m in messages]))
    snapshots = []
    for processes in ("1", "2"):
        prefix = f"{ns.name}-p{processes}"
        code, out = Rebuild(ns, "--no-switch", "--processes", processes, progress_every="0",
                            CX_BATCH_MAX_EVENTS="100", CX_KEY_PREFIX=prefix,
                            CX_GROUP_ID=prefix, **W2).wait()
        assert code == 0, out
        assert ("with 2 processes" in out) == (processes == "2"), out
        assert f"{len(messages):,} of {len(messages):,} messages" in out, out
        assert _applied(stack, f"{prefix}:v2") == len(messages)
        snapshots.append(_snapshot(stack, f"{prefix}:v2"))
    one, two = snapshots
    assert len(one[0]) > 300  # contacts' views
    assert sum(one[1].values()) > 0  # counters
    assert one == two
