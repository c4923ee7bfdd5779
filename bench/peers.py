"""Peers: the core job of cx-stream as a team would write it with another framework, to time
beside the worker on the same events, the same broker and in the same run.

The job: per customer, the handled contacts of the last 7 days; each handled call-ended of an
identified customer marked repeat or not, with `repeat_of` (the nearest earlier handled
contact of the customer within 7 days, as the worker decides it); per-hour counters (contacts,
handled, repeats per hour and queue); one enriched record per call-ended (the event with
`is_repeat` and `repeat_of`) published to an output topic. No perception, no Redis, no
exactly-once commit, no transfer or survey joins: transfers and surveys are consumed and
counted only.

- `faust`: a faust-streaming app, one agent over the input topics, two `Table`s
  (`memory://`, changelogged to Kafka): the contacts of each customer and the hour counters.
- `quix`: quix-streams, one `app.dataframe` per input topic, `sdf.apply(stateful=True)` on the
  call-ended one (RocksDB state, changelogged); the hour counters are a dictionary of the
  process (quix-streams state is scoped to the message key, and the counters are per hour).

Run as `python -m bench.peers faust|quix` with BENCH_PEER_* variables (bench/e2e.py does); it
prints one JSON line {events, seconds, cpu_s, repeats} once it consumed them all.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import traceback
from bisect import insort
from datetime import datetime
from typing import Any

import orjson

WINDOW = 7 * 86400.0
CALL_ENDED = "call-ended"


def mark(contacts: list[list[Any]], t: float, contact_id: str) -> tuple[list[list[Any]],
                                                                       str | None]:
    """The customer's handled contacts of the 7 days up to `t` ([t, contact_id], sorted) with
    this one added, and the contact it repeats (None: not a repeat). Ties in time are ordered
    by contact_id, as the worker orders them."""
    cutoff = t - WINDOW
    kept = [c for c in contacts if c[0] >= cutoff]
    entry = [t, contact_id]
    insort(kept, entry)
    i = kept.index(entry)
    return kept, (kept[i - 1][1] if i > 0 else None)


def enrich(event: dict[str, Any], contacts: list[list[Any]] | None
           ) -> tuple[list[list[Any]] | None, dict[str, Any], tuple[str, str, bool] | None]:
    """One call-ended event: the customer's new contacts (None: unchanged), the enriched
    record, and the (hour, queue, is_repeat) to count when it was handled."""
    t = datetime.fromisoformat(event["occurred_at"]).timestamp()
    repeat_of = None
    counted = None
    new = None
    if event.get("outcome") == "handled":
        if event.get("customer_id") is not None:
            new, repeat_of = mark(contacts or [], t, event["contact_id"])
        counted = (str(int(t // 3600)), str(event.get("queue")), repeat_of is not None)
    out = dict(event)
    out["is_repeat"] = repeat_of is not None
    out["repeat_of"] = repeat_of
    return new, out, counted


def _settings() -> tuple[str, list[str], str, int, str]:
    env = os.environ
    return (env["BENCH_PEER_BOOTSTRAP"], env["BENCH_PEER_TOPICS"].split(","),
            env["BENCH_PEER_GROUP"], int(env["BENCH_PEER_EVENTS"]), env["BENCH_PEER_OUT"])


def _report(seen: int, first: list[float], repeats: int) -> None:
    print(orjson.dumps({"events": seen, "seconds": time.perf_counter() - first[0],
                        "cpu_s": time.process_time() - first[1],
                        "repeats": repeats}).decode(), flush=True)


def run_faust() -> None:
    import faust

    bootstrap, topics, group, total, out_topic = _settings()
    partitions = int(os.environ.get("BENCH_PEER_PARTITIONS", "6"))
    app = faust.App(
        group, broker=[f"kafka://{bootstrap}"], store="memory://", autodiscover=False,
        datadir=tempfile.mkdtemp(prefix="cx-peer-faust-"), web_enabled=False,
        topic_partitions=partitions, consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0)
    source = app.topic(*topics, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw", allow_empty=True)
    out = app.topic(out_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                    value_serializer="raw")
    contacts = app.Table("contacts", default=list, partitions=partitions)
    hours = app.Table("hours", default=list, partitions=partitions)
    call_ended = next(t for t in topics if t.endswith(CALL_ENDED))
    seen = repeats = 0
    first: list[float] = []

    async def job(stream: Any) -> None:
        nonlocal seen, repeats
        async for event in stream.events():
            if not first:
                first.extend((time.perf_counter(), time.process_time()))
            seen += 1
            if event.message.topic == call_ended:
                value = orjson.loads(event.value)
                key = event.key.decode()
                new, record, counted = enrich(value, contacts[key] if
                                              value.get("customer_id") is not None else None)
                if new is not None:
                    contacts[key] = new
                if counted is not None:
                    name = f"{counted[0]}|{counted[1]}"
                    current = hours[name] or [0, 0]
                    hours[name] = [current[0] + 1, current[1] + counted[2]]
                    repeats += counted[2]
                await out.send(key=value["contact_id"].encode(), value=orjson.dumps(record))
            if seen >= total:
                await app.producer.flush()
                _report(seen, first, repeats)
                os._exit(0)

    async def guarded(stream: Any) -> None:
        try:
            await job(stream)
        except Exception:  # a crashed agent would leave the worker idle: end the run
            traceback.print_exc()
            os._exit(1)

    app.agent(source, name="peer", concurrency=1, sink=None)(guarded)
    asyncio.set_event_loop(asyncio.new_event_loop())
    # loglevel=WARNING and quiet: `faust.Worker`'s default keeps a terminal spinner and sets
    # the root logger to DEBUG, which costs about a third more CPU per event.
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    sys.argv = sys.argv[:1]
    worker.execute_from_commandline()


def run_quix() -> None:
    from quixstreams import Application

    bootstrap, topics, group, total, out_topic = _settings()
    app = Application(broker_address=bootstrap, consumer_group=group,
                      auto_offset_reset="earliest", commit_interval=1.0,
                      state_dir=tempfile.mkdtemp(prefix="cx-peer-quix-"), loglevel="WARNING")
    out = app.topic(out_topic, key_serializer="str", value_serializer="json")
    hours: dict[str, list[int]] = {}
    seen = repeats = 0
    first: list[float] = []

    def count() -> None:
        nonlocal seen
        if not first:
            first.extend((time.perf_counter(), time.process_time()))
        seen += 1
        if seen >= total:
            _report(seen, first, repeats)
            app.stop()

    def call(value: dict[str, Any], state: Any) -> dict[str, Any]:
        nonlocal repeats
        known = value.get("customer_id") is not None
        new, record, counted = enrich(value, state.get("contacts", []) if known else None)
        if new is not None:
            state.set("contacts", new)
        if counted is not None:
            name = f"{counted[0]}|{counted[1]}"
            current = hours.setdefault(name, [0, 0])
            current[0] += 1
            current[1] += counted[2]
            repeats += counted[2]
        count()
        return record

    def other(value: Any) -> None:
        count()

    for name in topics:
        topic = app.topic(name, key_deserializer="bytes", value_deserializer="json")
        sdf = app.dataframe(topic)
        if name.endswith(CALL_ENDED):
            sdf = sdf.apply(call, stateful=True)
            sdf.to_topic(out, key=lambda record: record["contact_id"])
        else:
            sdf.update(other)
    app.run()


if __name__ == "__main__":
    {"faust": run_faust, "quix": run_quix}[sys.argv[1]]()
