"""Live measurements against a running worker: latency at a steady produce rate, and the
customer lookup under concurrent requests."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.support.stack import Namespace, assign_topic


def quantiles(values: list[float]) -> dict[str, float]:
    """p50, p99 and max, in milliseconds."""
    if not values:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"), "n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": ordered[-1] * 1000,
            "n": len(ordered)}


def _now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def live_call(run: str, seq: int, customer: str) -> dict[str, Any]:
    now = _now_text()
    return {"event_id": f"live-{run}-{seq}", "occurred_at": now,
            "contact_id": f"live-{run}-c{seq}",
            "customer_id": customer, "started_at": now, "channel": "voice",
            "queue": random.choice(["PS", "NW", "TT"]), "outcome": "handled",
            "agent_id": f"agent-{seq % 40}", "wait_seconds": 12.0, "talk_seconds": 95.0}


async def latency(bootstrap: str, ns: Namespace, base_url: str, rate: float, seconds: float,
                  lookups_per_s: float = 5.0) -> dict[str, Any]:
    """Produce call-ended events at `rate` per second for `seconds`; the time from each send
    to its enriched contact being read from the output topic, and (for a sample) to
    GET /api/v1/customers/{id} listing the contact."""
    out_topic = ns.topic("contact-enriched")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=5, auto_offset_reset="latest")
    await consumer.start()
    tps = await assign_topic(consumer, out_topic)
    await consumer.seek_to_end()
    for tp in tps:  # resolve the end offsets now, not when the first record is produced
        await consumer.position(tp)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    sent: dict[str, float] = {}
    enriched: list[float] = []
    lookups: list[float] = []
    done = asyncio.Event()

    async def read() -> None:
        while not done.is_set() or len(enriched) < len(sent):
            batch = await consumer.getmany(timeout_ms=50)
            now = time.perf_counter()
            for msgs in batch.values():
                for m in msgs:
                    key = m.key.decode() if m.key else ""
                    at = sent.pop(key, None)
                    if at is not None:
                        enriched.append(now - at)
            if done.is_set() and not sent:
                return

    async def lookup(session: aiohttp.ClientSession, customer: str, contact: str,
                     at: float) -> None:
        deadline = at + 10
        while time.perf_counter() < deadline:
            async with session.get(f"{base_url}/api/v1/customers/{customer}") as resp:
                body = await resp.read()
            if resp.status == 200 and contact.encode() in body:
                lookups.append(time.perf_counter() - at)
                return
            await asyncio.sleep(0.005)

    run = f"{random.randrange(16**8):08x}"
    reader = asyncio.create_task(read())
    lookup_tasks = []
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        total = int(rate * seconds)
        every = max(1, int(rate / lookups_per_s))
        for seq in range(total):
            target = started + seq / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            customer = f"live-cust-{random.randrange(20_000)}"
            event = live_call(run, seq, customer)
            key = event["contact_id"]
            at = time.perf_counter()
            sent[key] = at
            await producer.send(ns.topic("call-ended"), value=orjson.dumps(event),
                                key=customer.encode())
            if seq % every == 0:
                lookup_tasks.append(asyncio.create_task(lookup(session, customer, key, at)))
        achieved = total / (time.perf_counter() - started)
        await producer.flush()
        done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, 30)
        await asyncio.gather(*lookup_tasks)
    await producer.stop()
    await consumer.stop()
    return {"rate": achieved, "enriched": quantiles(enriched), "lookup": quantiles(lookups),
            "lost": len(sent)}


async def lookup_load(base_url: str, customers: list[str], concurrency: int, seconds: float
                      ) -> dict[str, Any]:
    """`concurrency` clients each sending GET /api/v1/customers/{id} back to back."""
    times: list[float] = []
    errors: dict[str, int] = {}
    stop_at = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def client(session: aiohttp.ClientSession, seed: int) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < stop_at:
            customer = rng.choice(customers)
            began = time.perf_counter()
            try:
                async with session.get(f"{base_url}/api/v1/customers/{customer}") as resp:
                    await resp.read()
                status = str(resp.status)
            except (aiohttp.ClientError, OSError) as exc:
                status = type(exc).__name__
            if status != "200":
                errors[status] = errors.get(status, 0) + 1
            times.append(time.perf_counter() - began)

    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.perf_counter()
        await asyncio.gather(*[client(session, i) for i in range(concurrency)])
        elapsed = time.perf_counter() - began
    return {**quantiles(times), "requests_per_s": len(times) / elapsed, "errors": errors}
