"""The pure fold alone: validated events in, `apply_event` then `settle` after every event.

Events per second of CPU time of the process (one core): the machine may be shared.

The watermark is the newest event time seen (as one input partition would have it). Decoding
and validation happen before the clock starts: this measures the domain fold only, with the
worker's garbage-collector settings.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import orjson

from service.domain.cardinality import LabelCaps
from service.domain.engine import apply_event, new_state, settle, state_key
from service.domain.events import ContactEvent, Rejection
from service.domain.policy import Policy
from service.domain.records import CustomerState
from service.domain.validation import validate_event
from service.gc_settings import tune_garbage_collector


def prepare(messages: list[tuple[str, bytes, bytes]]) -> list[ContactEvent]:
    out: list[ContactEvent] = []
    for kind, _, value in messages:
        event = validate_event(kind, orjson.loads(value))
        if isinstance(event, Rejection):
            raise SystemExit(f"workload event rejected: {event}")
        out.append(event)
    return out


def run(events: list[ContactEvent], policy: Policy | None = None) -> dict[str, Any]:
    """Fold every event with a settle after each; events/s and what came out."""
    policy = policy or Policy()
    caps = LabelCaps(500, 100, 5000)  # the worker's default caps of queue, segment, agent names
    # The worker's collector settings (service/gc_settings.py); they also freeze the prepared
    # events, which are the benchmark's input, not the fold's heap.
    tune_garbage_collector()
    states: dict[str, CustomerState] = {}
    wm = float("-inf")
    updates = alerts = 0
    started = time.perf_counter()
    cpu_started = time.process_time()
    for event in events:
        t = event.header.occurred_at.timestamp()
        if t > wm:
            wm = t
        key = state_key(event)
        state = states.get(key)
        if state is None:
            state = states[key] = new_state(event)
        apply_event(state, event)
        settled = settle(state, wm, policy, caps)
        updates += len(settled.updates)
        alerts += len(settled.alerts)
        if settled.forget:
            del states[key]
    cpu = time.process_time() - cpu_started
    elapsed = time.perf_counter() - started
    # CPU time, not wall time: on a shared machine the fold's own core time is what counts.
    return {"events": len(events), "seconds": elapsed, "cpu_seconds": cpu,
            "events_per_s": len(events) / cpu, "wall_events_per_s": len(events) / elapsed,
            "updates": updates, "alerts": alerts, "states": len(states)}


def main() -> None:
    from bench.workload import messages

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    events = prepare(messages(n))
    result = run(events)
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
