"""Reads what the service produced and compares it, exactly, with the oracle.

- every contact's verdict: the latest enriched view of each contact, as the contact API
  serves it (`GET /api/v1/contacts/{id}` reads the same Redis view, which the worker stores
  only after the record was published to `contact-enriched`);
- every hour-bucket counter of every dimension, summed over the partitions, read with
  `RedisState.read_buckets_by_hour`;
- the dead-letter topic: each dead-lettered message (deduplicated by source topic, partition
  and offset: dead letters are at least once) matched to the message the harness sent;
- every customer's perception score from `GET /api/v1/customers/{id}`;
- each partition's watermark.

Counts: *lost* (a contact, customer or dead letter missing; a counter below its truth),
*double_applied* (a counter above its truth; a contact with more transfers or surveys than
were sent once), *wrong* (anything else that differs, or exists and should not).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer

from service.adapters.redis_state import RedisState, connect
from tests.chaos.oracle import Expected
from tests.support.stack import assign_topic

PERCEPTION_TOLERANCE = 0.011  # the API rounds to 2 decimals


@dataclass
class Report:
    lost: int = 0
    double_applied: int = 0
    wrong: int = 0
    checked: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    redelivered_dead_letters: int = 0
    version_regressions: int = 0  # contact-enriched records not above an earlier version

    def add(self, kind: str, what: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples) < 25:
            self.examples.append(f"{kind}: {what}")

    @property
    def clean(self) -> bool:
        return self.lost == self.double_applied == self.wrong == 0

    def __str__(self) -> str:
        head = (f"lost={self.lost} double_applied={self.double_applied} wrong={self.wrong} "
                f"checked={dict(self.checked)} redelivered_dead_letters="
                f"{self.redelivered_dead_letters} version_regressions="
                f"{self.version_regressions}")
        return "\n  ".join([head, *self.examples])


Sent = dict[tuple[str, int, int], str | None]  # (topic, partition, offset) -> expected reason


async def compare(truth: Expected, sent: Sent, *, redis_url: str, prefix: str,
                  bootstrap: str, dead_letter_topic: str, api: str, partitions: int,
                  customers: int | None = None, enriched_topic: str | None = None
                  ) -> Report:
    """Compare everything; `customers` limits the perception check to that many customers
    (every n-th one, so the sample spreads over the partitions), None checks every one."""
    report = Report()
    state = RedisState(connect(redis_url), prefix, state_ttl=60, counter_ttl=60,
                       contact_ttl=60)
    try:
        views = await _contacts(report, truth, state)
        await _counters(report, truth, state, partitions)
        clocks = await state.read_clocks(partitions)
        for p, wm in truth.watermarks.items():
            report.checked["watermarks"] += 1
            if clocks[p].watermark is None or abs(clocks[p].watermark - wm) > 1e-6:
                report.add("wrong", f"partition {p} watermark {clocks[p].watermark} != {wm}")
    finally:
        await state.client.aclose()
    if enriched_topic is not None:
        await _published(report, views, bootstrap, enriched_topic)
    await _dead_letters(report, sent, bootstrap, dead_letter_topic)
    scores = truth.perception
    if customers is not None and len(scores) > customers:
        step = len(scores) / customers
        chosen = sorted(scores)
        scores = {c: scores[c] for c in (chosen[int(i * step)] for i in range(customers))}
    await _perception(report, scores, api)
    return report


async def _contacts(report: Report, truth: Expected, state: RedisState
                    ) -> dict[str, dict[str, Any]]:
    views: dict[str, dict[str, Any]] = {}
    ids = list(truth.contacts)
    for i in range(0, len(ids), 5000):
        chunk = ids[i:i + 5000]
        pipe = state.client.pipeline(transaction=False)
        for cid in chunk:
            pipe.hget(state.contact_key(cid), "j")
        for cid, raw in zip(chunk, await pipe.execute(), strict=True):
            report.checked["contacts"] += 1
            want = truth.contacts[cid].fields()
            if raw is None:
                report.add("lost", f"contact {cid}")
                continue
            view = orjson.loads(raw)
            views[cid] = view
            got = {name: view.get(name) for name in want}
            if got == want:
                continue
            if got["transfers"] > want["transfers"] or got["surveys"] > want["surveys"]:
                report.add("double_applied", f"contact {cid}: {_diff(got, want)}")
            else:
                report.add("wrong", f"contact {cid}: {_diff(got, want)}")
    # contacts that must not exist: ids the stream used only in rejected messages
    pipe = state.client.pipeline(transaction=False)
    bad = [f"late-ct-{i:06d}" for i in range(50)]
    for cid in bad:
        pipe.exists(state.contact_key(cid))
    for cid, found in zip(bad, await pipe.execute(), strict=True):
        if found:
            report.add("wrong", f"contact {cid} exists but every event of it was too late")
    return views


async def _published(report: Report, views: dict[str, dict[str, Any]], bootstrap: str,
                     topic: str) -> None:
    """The last record of each contact on `contact-enriched` (what compaction keeps) is the
    view the API serves. Also counts version regressions: a later record whose version is
    not above an earlier one's (after Redis lost writes, re-applied contacts are numbered
    again from what Redis kept)."""
    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    top: dict[str, dict[str, Any]] = {}  # the highest version seen so far, per contact
    for record in await read_all(bootstrap, topic):
        view = orjson.loads(record.value)
        cid = view["contact_id"]
        seen = latest.get(cid)
        if seen is None or seen[0] < record.offset:
            latest[cid] = (record.offset, view)
        best = top.get(cid)
        if best is not None and (view["version"] < best["version"] or (
                view["version"] == best["version"] and view != best)):
            report.version_regressions += 1  # not a mere redelivery of the same record
        if best is None or view["version"] > best["version"]:
            top[cid] = view
    for cid, view in views.items():
        report.checked["published contacts"] += 1
        if cid not in latest:
            report.add("lost", f"contact {cid} never published")
        elif latest[cid][1] != view:
            report.add("wrong", f"contact {cid}: last published record (version "
                       f"{latest[cid][1]['version']}) is not the view served (version "
                       f"{view['version']})")


def _diff(got: dict[str, Any], want: dict[str, Any]) -> str:
    return ", ".join(f"{k}={got[k]!r} (want {want[k]!r})" for k in want if got[k] != want[k])


async def _counters(report: Report, truth: Expected, state: RedisState, partitions: int
                    ) -> None:
    hours = sorted({h for h, _ in truth.counters})
    if not hours:
        return
    span = list(range(hours[0] - 7 * 86400, hours[-1] + 7 * 86400 + 1, 3600))
    actual: Counter[tuple[int, str]] = Counter()
    for i in range(0, len(span), 240):
        buckets = await state.read_buckets_by_hour(partitions, span[i:i + 240])
        for hour, per_partition in buckets.items():
            for fields in per_partition:
                for name, n in fields.items():
                    if n:
                        actual[(hour, name)] += n
    for cell in set(actual) | set(truth.counters):
        report.checked["counter cells"] += 1
        got, want = actual.get(cell, 0), truth.counters.get(cell, 0)
        if got > want:
            report.add("double_applied", f"counter {cell}: {got} (want {want})")
        elif got < want:
            report.add("lost", f"counter {cell}: {got} (want {want})")


async def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record of a topic, from the beginning to its end offsets now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    try:
        tps = await assign_topic(consumer, topic)
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        done = {tp for tp in tps if ends[tp] == 0}
        while len(done) < len(tps):
            batch = await consumer.getmany(timeout_ms=1000, max_records=10000)
            for tp, msgs in batch.items():
                records.extend(msgs)
                if msgs and msgs[-1].offset + 1 >= ends[tp]:
                    done.add(tp)
        return records
    finally:
        await consumer.stop()


async def _dead_letters(report: Report, sent: Sent, bootstrap: str, topic: str) -> None:
    got: dict[tuple[str, int, int], str] = {}
    for record in await read_all(bootstrap, topic):
        d = orjson.loads(record.value)
        where = (d["topic"], d["partition"], d["offset"])
        if where in got:
            report.redelivered_dead_letters += 1
        got[where] = d["reason"]
    want = {where: reason for where, reason in sent.items() if reason is not None}
    report.checked["dead letters"] += len(want)
    for where, reason in want.items():
        if where not in got:
            report.add("lost", f"dead letter of {where} ({reason})")
        elif got[where] != reason:
            report.add("wrong", f"dead letter of {where}: {got[where]} (want {reason})")
    for where, reason in got.items():
        if where not in want:
            report.add("wrong", f"{where} dead-lettered as {reason}, but it is valid"
                       if where in sent else f"dead letter of an unknown message {where}")


async def _perception(report: Report, scores: dict[str, float], api: str) -> None:
    limit = asyncio.Semaphore(8)

    async def one(session: aiohttp.ClientSession, customer: str, want: float) -> None:
        async with limit:
            for _ in range(5):
                try:
                    async with session.get(f"{api}/api/v1/customers/{customer}") as resp:
                        status, body = resp.status, await resp.read()
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.5)
            else:
                status, body = 0, b""
        report.checked["customers"] += 1
        if status == 404:
            report.add("lost", f"customer {customer}")
        elif status != 200:
            report.add("wrong", f"customer {customer}: HTTP {status}")
        else:
            score = orjson.loads(body)["perception"]["score"]
            if abs(score - want) > PERCEPTION_TOLERANCE:
                report.add("wrong", f"customer {customer}: perception {score} (want {want})")

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(one(session, c, s) for c, s in scores.items()))
