"""Live measurements against a running worker: latency at a steady produce rate, and the
customer lookup under concurrent requests."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from service.adapters.event_loop import new_event_loop
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


POLLS_PER_S = 200  # the sampled lookups' polls, all together


class _Pacer:
    """Turns at most `rate` times a second, first come first served."""

    def __init__(self, rate: float) -> None:
        self._gap = 1 / rate
        self._next = 0.0

    async def turn(self) -> None:
        now = time.perf_counter()
        slot = max(now, self._next)
        self._next = slot + self._gap
        if slot > now:
            await asyncio.sleep(slot - now)


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
    GET /api/v1/customers/{id} listing the contact.

    The reader's fetches wait up to 100 ms on the broker, which answers as soon as a record
    arrives: no latency added, and no broker polled 200 times a second. A sampled lookup is
    polled every 10 ms for its first 500 ms, then every 50 ms, and all of them together at
    most POLLS_PER_S times a second: a worker that falls behind is not also flooded by the
    pollers of every event it has not applied yet (50 samples in flight polled every 50 ms
    would be 1,000 lookups a second, more than the events)."""
    out_topic = ns.topic("contact-enriched")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=100, auto_offset_reset="latest")
    await consumer.start()
    tps = await assign_topic(consumer, out_topic)
    await consumer.seek_to_end()
    for tp in tps:  # resolve the end offsets now, not when the first record is produced
        await consumer.position(tp)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    sent: dict[str, float] = {}
    enriched: list[float] = []
    timeline: list[tuple[float, float]] = []  # (sent at, latency), for finding stalls
    lookups: list[float] = []
    done = asyncio.Event()
    polls = _Pacer(POLLS_PER_S)

    async def read() -> None:
        # Until every event sent was read back (or the caller's timeout): the last events of
        # the run count like the others.
        while not done.is_set() or sent:
            batch = await consumer.getmany(timeout_ms=50)
            now = time.perf_counter()
            for msgs in batch.values():
                for m in msgs:
                    key = m.key.decode() if m.key else ""
                    at = sent.pop(key, None)
                    if at is not None:
                        enriched.append(now - at)
                        timeline.append((at, now - at))

    async def lookup(session: aiohttp.ClientSession, customer: str, contact: str,
                     at: float) -> None:
        deadline = at + 10
        while time.perf_counter() < deadline:
            await polls.turn()
            async with session.get(f"{base_url}/api/v1/customers/{customer}") as resp:
                body = await resp.read()
            if resp.status == 200 and contact.encode() in body:
                lookups.append(time.perf_counter() - at)
                return
            await asyncio.sleep(0.01 if time.perf_counter() - at < 0.5 else 0.05)

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
            "lost": len(sent), "timeline": sorted((at - started, lag) for at, lag in timeline)}


class _HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the load client: one request at a time, the
    response read whole (Content-Length) and handed back with its status."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionResetError("connection closed by the server")
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(self._lost)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0 or self._waiter is None or self._waiter.done():
            return
        head = bytes(self._buffer[:head_end]).decode("latin-1").split("\r\n")
        length = None
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if length is None:
            self._waiter.set_exception(ValueError("response without Content-Length"))
            return
        end = head_end + 4 + length
        if len(self._buffer) < end:
            return
        body = bytes(self._buffer[head_end + 4:end])
        del self._buffer[:end]
        self._waiter.set_result((int(head[0].split(" ", 2)[1]), body))

    async def get(self, request: bytes) -> tuple[int, bytes]:
        if self._lost is not None or self.transport is None:
            raise self._lost or ConnectionError("not connected")
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self._waiter


async def lookup_load(base_url: str, paths: list[str], concurrency: int, seconds: float,
                      check: Callable[[str, bytes], bool] = lambda path, body: True
                      ) -> dict[str, Any]:
    """`concurrency` clients, each on its own keep-alive connection, sending GET requests for
    `paths` back to back (closed loop: the next request when the previous one answered).

    A light client (HTTP/1.1 over asyncio protocols, no client library) so that the client's
    own CPU, on the same cores, weighs less in what is measured. Every response is checked:
    status 200 and `check(path, body)`, else it counts as an error."""
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    loop = asyncio.get_running_loop()
    times: list[float] = []
    errors: dict[str, int] = {}
    stop_at = time.perf_counter() + seconds
    requests = {p: (f"GET {p} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    "Accept: application/json\r\n\r\n").encode() for p in paths}

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        connection: _HttpConnection | None = None
        while time.perf_counter() < stop_at:
            path = rng.choice(paths)
            began = time.perf_counter()
            try:
                if connection is None:
                    _, connection = await loop.create_connection(_HttpConnection, host, port)
                status, body = await connection.get(requests[path])
                outcome = (str(status) if status != 200
                           else "200" if check(path, body) else "unexpected body")
            except (OSError, ValueError) as exc:
                outcome = type(exc).__name__
                connection = None
            if outcome != "200":
                errors[outcome] = errors.get(outcome, 0) + 1
            times.append(time.perf_counter() - began)
        if connection is not None and connection.transport is not None:
            connection.transport.close()

    began = time.perf_counter()
    await asyncio.gather(*[client(i) for i in range(concurrency)])
    elapsed = time.perf_counter() - began
    return {**quantiles(times), "requests_per_s": len(times) / elapsed, "errors": errors,
            "requests": len(times)}


async def lookup_open_loop(base_url: str, paths: list[str], rate: float, seconds: float,
                           check: Callable[[str, bytes], bool] = lambda path, body: True,
                           timeout: float = 5.0) -> dict[str, Any]:
    """GET requests for `paths` at a fixed `rate` per second for `seconds` (open loop: a
    request is sent when its time comes, whether or not earlier ones answered), each on an
    idle keep-alive connection or a new one. A request's latency runs from the time it was
    due, so a server that falls behind is charged for the wait (no coordinated omission); one
    not answered within `timeout` seconds counts as an error (TimeoutError)."""
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    loop = asyncio.get_running_loop()
    times: list[float] = []
    errors: dict[str, int] = {}
    idle: list[_HttpConnection] = []
    rng = random.Random(7)
    requests = {p: (f"GET {p} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    "Accept: application/json\r\n\r\n").encode() for p in paths}
    connections = 0

    async def one(path: str, due: float) -> None:
        nonlocal connections
        outcome = "200"
        connection = idle.pop() if idle else None
        try:
            if connection is None:
                _, connection = await loop.create_connection(_HttpConnection, host, port)
                connections += 1
            status, body = await asyncio.wait_for(connection.get(requests[path]), timeout)
            outcome = (str(status) if status != 200
                       else "200" if check(path, body) else "unexpected body")
        except (OSError, ValueError, TimeoutError) as exc:
            outcome = type(exc).__name__
            if connection is not None and connection.transport is not None:
                connection.transport.close()
            connection = None
        times.append(time.perf_counter() - due)
        if outcome != "200":
            errors[outcome] = errors.get(outcome, 0) + 1
        if connection is not None:
            idle.append(connection)

    total = int(rate * seconds)
    tasks = []
    started = time.perf_counter()
    for i in range(total):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(rng.choice(paths), due)))
    sent = time.perf_counter() - started
    await asyncio.gather(*tasks)
    for connection in idle:
        if connection.transport is not None:
            connection.transport.close()
    return {**quantiles(times), "rate": rate, "sent_per_s": total / sent, "errors": errors,
            "requests": len(times), "connections": connections}


FIXED_BODY = orjson.dumps({"customer_id": "bare", "perception": {"score": 50.0}})


def serve_fixed_json(port: int) -> None:
    """The baseline: a bare aiohttp server whose one handler returns a fixed small JSON body,
    on the event loop the worker uses (uvloop when installed)."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=FIXED_BODY, content_type="application/json")

    app = web.Application()
    app.router.add_get("/bare/{customer_id}", handler)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                loop=new_event_loop())


if __name__ == "__main__":  # python -m bench.live serve PORT: the bare baseline server
    import sys

    serve_fixed_json(int(sys.argv[2]))
