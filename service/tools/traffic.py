"""A seeded model of a contact centre's traffic, in event time.

Contacts arrive as a Poisson process whose rate follows the hour of the day; each one picks a
customer (some unidentified), a queue, a channel and, when handled, an agent. Waits drive
abandons; some contacts are transferred (the transfer event often published before the
call-ended); some get a survey answered minutes to days later; customers whose problem was not
solved tend to call back. A share of events is sent twice and a few are malformed, as real
producers do.

`TrafficModel.advance(until)` returns every message whose publish time is not after `until`,
in publish order. Pure apart from its own random generator: the same seed and start give the
same messages.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

# Relative arrival intensity per hour of day (mean 1.0): quiet nights, a morning peak, a
# smaller afternoon one.
HOURLY_PROFILE = tuple(
    v / (sum(_p) / 24)
    for _p in [(0.15, 0.1, 0.08, 0.08, 0.1, 0.2, 0.5, 1.0, 1.6, 1.9, 2.0, 1.9,
                1.6, 1.7, 1.8, 1.7, 1.5, 1.2, 0.9, 0.7, 0.5, 0.4, 0.3, 0.2)]
    for v in _p
)

QUEUES = {
    # queue: (weight, mean wait s, chance the problem is solved, reasons)
    "billing": (0.30, 70.0, 0.78, ("invoice_query", "payment_failed", "refund")),
    "tech_support": (0.25, 150.0, 0.62, ("no_service", "device_setup", "outage")),
    "sales": (0.20, 40.0, 0.88, ("new_plan", "upgrade")),
    "retention": (0.10, 90.0, 0.70, ("cancel_request", "complaint")),
    "general": (0.15, 60.0, 0.82, ("info", "address_change", "other")),
}
CHANNEL_WEIGHTS = {"voice": 0.55, "chat": 0.25, "email": 0.10, "sms": 0.04, "social": 0.03,
                   "video": 0.03}
SEGMENTS = (("standard", 0.70), ("gold", 0.20), ("platinum", 0.10))
# A customer's value per month: the median of their segment, spread lognormally; the CRM
# attaches it to this share of their contacts.
SEGMENT_VALUE = {"standard": 45.0, "gold": 180.0, "platinum": 650.0}
VALUE_SHARE = 0.6
AGENTS_PER_QUEUE = 8


@dataclass(order=True)
class _Pending:
    publish_at: float
    seq: int
    topic: str = field(compare=False)
    key: bytes | None = field(compare=False)
    value: bytes = field(compare=False)
    # The event, when `value` is its JSON: serialized when published, so that what the
    # contact's end decides (speech analytics) can still be added to it.
    event: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Message:
    """One message to publish: topic kind, key and value bytes, and its publish time."""

    kind: str
    key: bytes | None
    value: bytes
    publish_at: float


def _ts(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


class TrafficModel:
    def __init__(
        self,
        *,
        start: float,
        contacts_per_second: float,
        customers: int,
        seed: int | None,
        duplicate_share: float = 0.01,
        malformed_share: float = 0.002,
        unidentified_share: float = 0.10,
        callback_share: float = 0.65,
        degraded_queues: tuple[str, ...] = (),
    ) -> None:
        self._rng = random.Random(seed)
        # Draws of the fields added later (customer value) come from a generator of their
        # own, so the rest of the traffic of a seed stays what it was.
        self._extra_rng = random.Random(None if seed is None else seed * 7919 + 17)
        self._values: dict[str, float] = {}
        self._rate = contacts_per_second
        self._customers = customers
        self._dup = duplicate_share
        self._malformed = malformed_share
        self._unidentified = unidentified_share
        self._callback = callback_share
        self._degraded = frozenset(degraded_queues)
        self._pending: list[_Pending] = []
        self._callbacks: list[tuple[float, int, str, str]] = []
        self._seq = 0
        self._contact_no = 0
        self._segments: dict[str, str] = {}
        self._queue_names = list(QUEUES)
        self._queue_weights = [q[0] for q in QUEUES.values()]
        self._channels = list(CHANNEL_WEIGHTS)
        self._channel_weights = list(CHANNEL_WEIGHTS.values())
        self._next_arrival = self._draw_next_arrival(start)

    # -- public -------------------------------------------------------------------------

    def advance(self, until: float) -> list[Message]:
        """Generate contacts up to `until` and return the messages due by then, in order."""
        while True:
            callback_at = self._callbacks[0][0] if self._callbacks else math.inf
            if min(self._next_arrival, callback_at) > until:
                break
            if callback_at <= self._next_arrival:
                at, _, customer, queue = heapq.heappop(self._callbacks)
                self._contact(at, customer, callback=True, queue_hint=queue)
            else:
                self._contact(self._next_arrival, None, callback=False)
                self._next_arrival = self._draw_next_arrival(self._next_arrival)
        out: list[Message] = []
        while self._pending and self._pending[0].publish_at <= until:
            p = heapq.heappop(self._pending)
            value = p.value if p.event is None else orjson.dumps(p.event)
            out.append(Message(p.topic, p.key, value, p.publish_at))
        return out

    # -- arrivals -----------------------------------------------------------------------

    def _intensity(self, at: float) -> float:
        hour = datetime.fromtimestamp(at, UTC).hour
        return self._rate * HOURLY_PROFILE[hour]

    def _draw_next_arrival(self, after: float) -> float:
        """Next arrival of the non-homogeneous Poisson process, by thinning."""
        peak = self._rate * max(HOURLY_PROFILE)
        t = after
        while True:
            t += self._rng.expovariate(peak)
            if self._rng.random() * peak <= self._intensity(t):
                return t

    def _segment(self, customer: str) -> str:
        if customer not in self._segments:
            r = self._rng.random()
            acc = 0.0
            for name, share in SEGMENTS:
                acc += share
                if r <= acc:
                    self._segments[customer] = name
                    break
            else:
                self._segments[customer] = SEGMENTS[-1][0]
        return self._segments[customer]

    def _analytics(self, event: dict[str, Any], wait: float, *,
                   callback: bool, transferred: bool, solved: bool) -> None:
        """What speech and text analytics hear in a handled contact: worse sentiment and more
        complaints on callbacks, long waits, transfers and unsolved problems."""
        rng = self._extra_rng
        stress = (0.35 * callback + 0.3 * min(1.0, wait / 300) + 0.25 * transferred
                  + 0.3 * (not solved))
        sentiment = max(-1.0, min(1.0, 0.45 - 1.1 * stress + rng.gauss(0, 0.25)))
        complaint = rng.random() < 0.02 + 0.25 * stress
        topics = [event["reason"]] if event.get("reason") else []
        if wait > 180:
            topics.append("long_wait")
        if transferred:
            topics.append("transferred")
        if callback:
            topics.append("repeat_issue")
        if complaint and rng.random() < 0.3:
            topics.append("cancel_threat")
        event.update({"sentiment": round(sentiment, 2), "complaint": complaint,
                      "topics": topics[:10]})

    def _value(self, customer: str) -> float:
        """The customer's value per month; now and then it changes (a new plan)."""
        rng = self._extra_rng
        value = self._values.get(customer)
        if value is None or rng.random() < 0.05:
            median = SEGMENT_VALUE[self._segment(customer)]
            value = self._values[customer] = round(rng.lognormvariate(math.log(median), 0.5), 2)
        return value

    # -- one contact and what follows from it --------------------------------------------

    def _contact(self, started: float, customer: str | None, *, callback: bool,
                 queue_hint: str | None = None) -> None:
        rng = self._rng
        self._contact_no += 1
        contact_id = f"ct-{self._contact_no:08d}-{rng.getrandbits(24):06x}"
        if customer is None and rng.random() >= self._unidentified:
            customer = f"cust-{rng.randrange(self._customers):06d}"
        queue = rng.choices(self._queue_names, self._queue_weights)[0]
        if callback and queue_hint is not None:
            queue = queue_hint  # a customer calls back about the same problem
        _, mean_wait, solve_chance, reasons = QUEUES[queue]
        degraded = queue in self._degraded
        if degraded:  # an outage, a broken process: few problems get solved
            solve_chance = 0.1
        channel = rng.choices(self._channels, self._channel_weights)[0]
        wait = rng.expovariate(1 / mean_wait) * (0.3 if channel == "email" else 1.0)
        if channel == "voice" and rng.random() < 0.07:
            outcome = "self_service"
            wait = 0.0
        elif rng.random() < min(0.45, wait / 1200):
            outcome = "abandoned"
        else:
            outcome = "handled"
        talk = rng.lognormvariate(math.log(240), 0.6) if outcome == "handled" else 0.0
        hold = rng.expovariate(1 / 60) if outcome == "handled" and rng.random() < 0.3 else 0.0
        ended = started + wait + talk + hold + (rng.uniform(20, 90) if outcome == "self_service"
                                                 else 0.0)
        agent = (f"agent-{queue}-{rng.randrange(AGENTS_PER_QUEUE) + 1:02d}"
                 if outcome == "handled" else None)
        event: dict[str, Any] = {
            "event_id": f"{contact_id}-ended",
            "occurred_at": _ts(ended),
            "contact_id": contact_id,
            "customer_id": customer,
            "started_at": _ts(started),
            "channel": channel,
            "queue": queue,
            "outcome": outcome,
            "agent_id": agent,
            "reason": rng.choice(reasons) if outcome == "handled" else None,
            "segment": self._segment(customer) if customer else None,
            "wait_seconds": round(wait, 1),
            "hold_seconds": round(hold, 1),
            "talk_seconds": round(talk, 1),
        }
        if callback:
            event["callback"] = True
        if customer is not None and self._extra_rng.random() < VALUE_SHARE:
            event["customer_value"] = self._value(customer)
        publish_end = ended + rng.uniform(0.5, 5.0)
        self._emit("call-ended", event, publish_end)

        solved = outcome != "handled" or rng.random() < solve_chance
        transferred = outcome == "handled" and rng.random() < 0.12
        if transferred:
            solved = solved and rng.random() < 0.6
            at = started + wait + talk * rng.uniform(0.2, 0.8)
            to_queue = rng.choice([q for q in self._queue_names if q != queue])
            transfer = {
                "event_id": f"{contact_id}-transfer-1",
                "occurred_at": _ts(at),
                "contact_id": contact_id,
                "customer_id": customer,
                "from_queue": queue,
                "to_queue": to_queue,
                "from_agent": agent,
                "to_agent": f"agent-{to_queue}-{rng.randrange(AGENTS_PER_QUEUE) + 1:02d}",
                "kind": rng.choice(("warm", "cold", "blind")),
            }
            # Most platforms publish the transfer as it happens, before the call has ended.
            publish = at + 1.0 if rng.random() < 0.6 else publish_end + rng.uniform(0.1, 30)
            self._emit("transfer", transfer, publish)
        if outcome == "handled" and channel != "sms":
            self._analytics(event, wait, callback=callback, transferred=transferred,
                            solved=solved)
        if outcome == "handled" and customer is not None and rng.random() < 0.25:
            delay = min(rng.lognormvariate(math.log(1800), 1.6), 5 * 86400.0)
            answered = ended + 60 + delay
            said_resolved = solved if rng.random() < 0.9 else not solved
            survey: dict[str, Any] = {
                "event_id": f"{contact_id}-survey",
                "occurred_at": _ts(answered),
                "contact_id": contact_id,
                "customer_id": customer,
                "source": rng.choice(("ivr", "sms", "email", "web")),
                "csat": rng.choice((4, 5, 5)) if said_resolved else rng.choice((1, 2, 2, 3)),
                "nps": rng.choice((8, 9, 10, 10)) if said_resolved else rng.randrange(0, 7),
                "resolved": said_resolved,
            }
            if rng.random() < 0.5:
                survey["ces"] = rng.randrange(1, 4) if said_resolved else rng.randrange(4, 8)
            self._emit("survey-answered", survey, answered + rng.uniform(0.1, 10))
        if (customer is not None and outcome != "self_service" and (
            not solved and rng.random() < self._callback
        )) or (outcome == "abandoned" and customer is not None and rng.random() < 0.5):
            back = ended + rng.lognormvariate(math.log(6 * 3600), 1.3)
            heapq.heappush(self._callbacks, (back, self._next_seq(), customer, queue))
        elif outcome == "self_service" and customer is not None and rng.random() < 0.35:
            # The IVR or bot did not settle it: the customer comes back, mostly to an agent,
            # soon after (a failed containment when that contact is handled).
            back = ended + rng.lognormvariate(math.log(1800), 1.0)
            heapq.heappush(self._callbacks, (back, self._next_seq(), customer, queue))

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _emit(self, kind: str, event: dict[str, Any], publish_at: float) -> None:
        rng = self._rng
        key = (event["customer_id"] or event["contact_id"]).encode()
        whole: dict[str, Any] | None = None
        if rng.random() < self._malformed:
            value = self._malform(kind, event)
        else:
            value, whole = b"", event
        heapq.heappush(self._pending, _Pending(publish_at, self._next_seq(), kind, key, value,
                                               whole))
        if rng.random() < self._dup:
            heapq.heappush(self._pending, _Pending(
                publish_at + rng.uniform(0.1, 120), self._next_seq(), kind, key, value, whole
            ))

    def _malform(self, kind: str, event: dict[str, Any]) -> bytes:
        """One of the ways real producers break events."""
        broken = dict(event)
        way = self._rng.randrange(6)
        if way == 0:
            return orjson.dumps(event)[:-7]  # truncated JSON
        if way == 1:
            broken.pop("contact_id")
        elif way == 2:
            broken["occurred_at"] = "yesterday at noon"
        elif way == 3:
            broken["event_id"] = 12345
        elif way == 4:
            if kind == "call-ended":
                broken["channel"] = "carrier_pigeon"
            else:
                broken["customer_id"] = ""
        else:
            if kind == "call-ended":
                started = datetime.fromisoformat(event["occurred_at"]) + timedelta(hours=1)
                broken["started_at"] = started.isoformat()
            else:
                return b"[1, 2, 3]"
        return orjson.dumps(broken)
