"""A seeded, large, messy stream of contact-centre events, with the truth about each message.

The stream covers many simulated days: identified customers who call back (repeats), callers
without a customer id, abandoned and self-service contacts, transfers that reach Kafka before
or after their call-ended, surveys answered minutes to days later, call-ended corrections,
5% of events sent again with the same id, events out of order (always within the allowed
lateness, so none of them may be judged too late), and 1% invalid messages of every kind.

`Stream.main` is produced first. `Stream.tail` holds events older than every partition's
final watermark minus the allowed lateness: they must be dead-lettered as `too_late`, and are
produced only once `main` has been applied (before that, a partition's watermark could still
be unset and lateness cannot be judged).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson

DAY = 86400
T0 = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp())  # a Monday
QUEUES = ("billing", "cards", "loans", "mortgages", "fraud", "general")
CHANNELS = ("voice", "chat", "email", "sms", "social", "video")
REASONS = ("balance", "dispute", "lost_card", "address_change", "payment_plan")
TOPICS = ("fees", "card>limit", "app_login", "fraud")  # repeats within a contact count once
SEGMENTS = (None, None, "standard", "standard", "gold")
SOURCES = ("ivr", "sms", "email", "web", "third_party")
KINDS = ("call-ended", "transfer", "survey-answered")
MAX_DISORDER = 3 * DAY  # an event reaches Kafka at most this long after its occurred_at


@dataclass
class Message:
    kind: str  # call-ended, transfer, survey-answered: which input topic
    key: bytes | None
    value: bytes | None
    event: dict[str, Any] | None  # the valid event, None when it must be rejected
    reject: str | None = None  # the expected dead-letter reason
    emit: float = 0.0  # when the producer sends it (simulated time), orders the stream


@dataclass
class Stream:
    seed: int
    main: list[Message]
    tail: list[Message] = field(default_factory=list)

    @property
    def messages(self) -> list[Message]:
        return self.main + self.tail

    def summary(self) -> dict[str, Any]:
        ids = Counter(m.event["event_id"] for m in self.main if m.event is not None)
        return {
            "messages": len(self.main) + len(self.tail),
            "valid": sum(1 for m in self.main if m.event is not None),
            "duplicates": sum(n - 1 for n in ids.values()),
            "rejected": dict(Counter(m.reject for m in self.messages if m.reject)),
        }


def ts(ms: int, offset_minutes: int = 0) -> str:
    """RFC 3339 text of an epoch-millisecond instant, in the given UTC offset."""
    tz = UTC if offset_minutes == 0 else timezone(timedelta(minutes=offset_minutes))
    text = datetime.fromtimestamp(ms / 1000, tz).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def key_of(event: dict[str, Any]) -> bytes:
    return str(event["customer_id"] if event["customer_id"] is not None
               else event["contact_id"]).encode()


class _Builder:
    def __init__(self, seed: int, days: int, customers: int) -> None:
        self.rng = random.Random(seed)
        # topics from their own sequence: the rest of the stream is as without them
        self.topic_rng = random.Random(seed + 1_000_003)
        self.days = days
        self.customers = customers
        self.out: list[Message] = []
        self.n = 0

    def stamp(self, ms: int) -> str:
        # Most producers write UTC; some write a local offset: the same instant.
        r = self.rng.random()
        return ts(ms, 60 if r < 0.1 else -300 if r < 0.15 else 0)

    def emit_delay(self) -> float:
        r = self.rng.random()
        if r < 0.94:
            return self.rng.uniform(0, 30)
        if r < 0.99:
            return self.rng.uniform(30, 6 * 3600)
        return self.rng.uniform(6 * 3600, 2 * DAY)

    def add(self, kind: str, event: dict[str, Any], t_ms: int) -> Message:
        msg = Message(kind, key_of(event), orjson.dumps(event), event,
                      emit=t_ms / 1000 + self.emit_delay())
        self.out.append(msg)
        return msg

    def contact(self) -> list[tuple[str, dict[str, Any], int]]:
        """One contact: its call-ended and the transfers and surveys that go with it."""
        rng = self.rng
        self.n += 1
        cid = f"ct-{self.n:07d}"
        customer = None
        if rng.random() > 0.08:
            customer = f"cu-{int(self.customers * rng.random() ** 2):06d}"
        end_ms = T0 * 1000 + rng.randrange(self.days * DAY * 1000)
        r = rng.random()
        outcome = "handled" if r < 0.74 else "abandoned" if r < 0.88 else "self_service"
        wait = round(rng.expovariate(1 / 70), 1) if outcome != "self_service" else 0
        talk = round(rng.uniform(30, 900), 1) if outcome == "handled" else 0
        hold = round(rng.choice((0, 0, 0, rng.uniform(0, 600))), 1) if talk else 0
        start_ms = end_ms - int((wait + talk + hold) * 1000) - rng.randrange(5000)
        queue = rng.choice(QUEUES)
        event: dict[str, Any] = {
            "event_id": f"{cid}-end", "occurred_at": self.stamp(end_ms), "contact_id": cid,
            "customer_id": customer, "started_at": self.stamp(start_ms),
            "channel": rng.choice(CHANNELS), "queue": queue, "outcome": outcome,
            "agent_id": f"ag-{rng.randrange(40):03d}" if outcome == "handled" else None,
        }
        if rng.random() < 0.8:
            event["reason"] = rng.choice(REASONS)
        segment = rng.choice(SEGMENTS)
        if segment is not None or rng.random() < 0.5:
            event["segment"] = segment
        for name, value in (("wait_seconds", wait), ("talk_seconds", talk),
                            ("hold_seconds", hold)):
            if value or rng.random() < 0.5:
                event[name] = value
        if rng.random() < 0.1:
            event["crm_case"] = f"CASE-{rng.randrange(10**6)}"  # outside the contract
        if outcome == "handled" and self.topic_rng.random() < 0.5:  # speech analytics topics
            event["topics"] = self.topic_rng.choices(TOPICS, k=self.topic_rng.randint(1, 3))
        out = [("call-ended", event, end_ms)]
        if rng.random() < 0.005:  # a correction: the later call-ended of a contact stands
            fixed = dict(event, event_id=f"{cid}-fix", talk_seconds=talk + 1,
                         reason=rng.choice(REASONS))
            shift = rng.choice((-30_000, 30_000))
            fixed["occurred_at"] = self.stamp(end_ms + shift)
            fixed["started_at"] = self.stamp(start_ms + shift)
            out.append(("call-ended", fixed, end_ms + shift))
        if outcome == "handled" and rng.random() < 0.15:
            for i in range(2 if rng.random() < 0.1 else 1):
                at = start_ms + int((wait + rng.uniform(0, talk)) * 1000)
                transfer = {
                    "event_id": f"{cid}-tr{i}", "occurred_at": self.stamp(at),
                    "contact_id": cid, "customer_id": customer, "from_queue": queue,
                    "to_queue": rng.choice(QUEUES),
                }
                if rng.random() < 0.7:
                    transfer["kind"] = rng.choice(("warm", "cold", "blind"))
                    transfer["from_agent"] = event["agent_id"]
                out.append(("transfer", transfer, at))
        if rng.random() < 0.3:
            for i in range(2 if rng.random() < 0.03 else 1):
                at = end_ms + int(rng.choice((rng.uniform(60, 3600),
                                              rng.uniform(3600, 3 * DAY))) * 1000)
                survey: dict[str, Any] = {
                    "event_id": f"{cid}-sv{i}", "occurred_at": self.stamp(at),
                    "contact_id": cid, "customer_id": customer,
                    "source": rng.choice(SOURCES),
                }
                answers = {"csat": rng.randint(1, 5), "nps": rng.randint(0, 10),
                           "ces": rng.randint(1, 7), "resolved": rng.random() < 0.7}
                chosen = [a for a in answers if rng.random() < 0.6] or ["csat"]
                for a in chosen:
                    survey[a] = answers[a]
                out.append(("survey-answered", survey, at))
        return out


# -- invalid messages --------------------------------------------------------------------------

REJECT_KINDS = ("too_large", "not_json", "not_object", "missing_field", "wrong_type",
                "invalid_value", "bad_timestamp", "started_after_occurred")


# What a hostile or buggy producer sends beyond plain contract errors (docs/reliability.md,
# "Bad data"): nesting past CX_MAX_EVENT_DEPTH, times outside years 1..9999 in UTC, event times
# far ahead of the record's Kafka timestamp, a key that is not the event's customer.
HOSTILE_KINDS = ("too_deep", "out_of_range_time", "from_future", "key_mismatch")


def hostile_message(rng: random.Random, reason: str, kind: str, event: dict[str, Any],
                    key: bytes | None) -> tuple[str, bytes | None, bytes | None, str]:
    """(kind, key, value, expected dead-letter reason) of a hostile message made from a valid
    event of `kind`."""
    e = dict(event)
    if reason == "too_deep":  # written by hand: orjson writes at most 254 levels
        depth = rng.randint(40, 300)
        nested = b'{"n":' * depth + b'"bottom"' + b"}" * depth
        return kind, key, orjson.dumps(e)[:-1] + b',"extra":' + nested + b"}", "too_deep"
    if reason == "out_of_range_time":
        e["occurred_at"] = rng.choice(["0001-01-01T00:00:00+23:59",
                                       "9999-12-31T23:59:59-23:59"])
        return kind, key, orjson.dumps(e), "bad_timestamp"
    if reason == "from_future":
        # Kafka stamps the record with the time it is sent: this is days ahead of that.
        ahead = datetime.now(UTC) + timedelta(days=rng.randint(2, 3000))
        e["occurred_at"] = ahead.isoformat()
        if kind == "call-ended":
            e["started_at"] = e["occurred_at"]
        return kind, key, orjson.dumps(e), "from_future"
    if reason == "key_mismatch":
        return kind, f"someone-else-{rng.randrange(10**6)}".encode(), orjson.dumps(e), reason
    raise ValueError(reason)


def invalid_message(rng: random.Random, reason: str, kind: str, event: dict[str, Any],
                    max_bytes: int = 65536) -> tuple[str, bytes | None]:
    """(kind, value) of a message that a correct service rejects with `reason`, made from a
    valid event of `kind` (started_after_occurred always makes a call-ended)."""
    e = dict(event)
    if reason == "too_large":
        e["notes"] = "x" * (max_bytes + rng.randrange(1, 5000))
        return kind, orjson.dumps(e)
    if reason == "not_json":
        return kind, rng.choice([None, b"", b"\xff\xfe{", b'{"event_id": "x", ',
                                 orjson.dumps(e)[:-1], b"NaN", b"{'single': 'quotes'}"])
    if reason == "not_object":
        return kind, rng.choice([b"[1, 2]", b'"call"', b"42", b"null", b"true",
                                 orjson.dumps([e])])
    if reason == "missing_field":
        required = {"call-ended": ["event_id", "occurred_at", "contact_id", "customer_id",
                                   "started_at", "channel", "queue", "outcome"],
                    "transfer": ["event_id", "occurred_at", "contact_id", "from_queue",
                                 "to_queue"],
                    "survey-answered": ["event_id", "contact_id", "source", "answers"]}[kind]
        name = rng.choice(required)
        if name == "answers":
            for a in ("csat", "nps", "ces", "resolved"):
                e.pop(a, None)
        else:
            e.pop(name)
        return kind, orjson.dumps(e)
    if reason == "wrong_type":
        options = {"call-ended": [("occurred_at", 1772409600), ("channel", 5),
                                  ("wait_seconds", "12"), ("queue", None),
                                  ("talk_seconds", True), ("event_id", ["a"])],
                   "transfer": [("from_queue", 3), ("to_queue", None), ("event_id", 7),
                                ("contact_id", {"id": 1})],
                   "survey-answered": [("csat", "5"), ("resolved", 1), ("nps", 7.5),
                                       ("source", None)]}[kind]
        name, value = rng.choice(options)
        e[name] = value
        return kind, orjson.dumps(e)
    if reason == "invalid_value":
        options = {"call-ended": [("channel", "carrier_pigeon"), ("outcome", "hung_up"),
                                  ("queue", ""), ("wait_seconds", -1),
                                  ("event_id", "e" * 129)],
                   "transfer": [("kind", "sideways"), ("to_queue", ""),
                                ("contact_id", "c" * 129)],
                   "survey-answered": [("csat", 9), ("nps", 11), ("ces", 0),
                                       ("source", "pigeon")]}[kind]
        name, value = rng.choice(options)
        e[name] = value
        return kind, orjson.dumps(e)
    if reason == "bad_timestamp":
        e["occurred_at"] = rng.choice(["yesterday at noon", "2026-13-01T00:00:00Z",
                                       "2026-03-02T10:00:00", "2026-02-30T10:00:00Z",
                                       "2026-03-02 10:00:00Z"])
        return kind, orjson.dumps(e)
    if reason == "started_after_occurred":
        assert kind == "call-ended"
        occurred = datetime.fromisoformat(e["occurred_at"])
        e["started_at"] = (occurred + timedelta(seconds=rng.randint(1, 600))).isoformat()
        return kind, orjson.dumps(e)
    raise ValueError(reason)


def generate(seed: int, events: int, days: int = 28, customers: int | None = None) -> Stream:
    """About `events` messages over `days` simulated days, in the order a producer sends them."""
    b = _Builder(seed, days, customers or max(40, events // 3))
    rng = b.rng
    valid: list[Message] = []
    while len(valid) < events * 0.94:
        for kind, event, t_ms in b.contact():
            valid.append(b.add(kind, event, t_ms))
    dups = []
    for msg in rng.sample(valid, int(len(valid) * 0.05)):
        dups.append(Message(msg.kind, msg.key, msg.value, msg.event,
                            emit=msg.emit + rng.uniform(0, DAY)))
    invalid = []
    span = (T0, T0 + days * DAY)
    for i in range(max(len(REJECT_KINDS), int((len(valid) + len(dups)) * 0.01))):
        reason = REJECT_KINDS[i % len(REJECT_KINDS)]
        kind, template, _ = rng.choice(b.contact())  # a contact that is never sent
        if reason == "started_after_occurred":
            kind = "call-ended"
            template = next(e for k, e, _ in b.contact() if k == "call-ended")
        template = dict(template, event_id=f"bad-{i:06d}")
        kind, value = invalid_message(rng, reason, kind, template)
        invalid.append(Message(kind, key_of(template), value, None, reason,
                               emit=rng.uniform(*span)))
    main = sorted(valid + dups + invalid, key=lambda m: m.emit)
    return Stream(seed, main)


def too_late_tail(stream: Stream, count: int, seed: int = 0) -> list[Message]:
    """Valid events older than any partition's final watermark minus a 7-day lateness: each
    must be dead-lettered as `too_late` and change nothing. Fresh ids, known customers."""
    rng = random.Random(seed or stream.seed + 1)
    keyed = [m.event for m in stream.main if m.event is not None]
    first = min(datetime.fromisoformat(e["occurred_at"]).timestamp() for e in keyed)
    out = []
    for i in range(count):
        base = dict(rng.choice(keyed))
        kind = next(k for k in KINDS if _shape(base) == k)
        at_ms = int((first - rng.uniform(DAY, 5 * DAY)) * 1000)
        base["event_id"] = f"late-{i:06d}"
        base["occurred_at"] = ts(at_ms)
        if kind == "call-ended":
            base["started_at"] = ts(at_ms - 60_000)
            base["contact_id"] = f"late-ct-{i:06d}"
        out.append(Message(kind, key_of(base), orjson.dumps(base), None, "too_late"))
    return out


def _shape(event: dict[str, Any]) -> str:
    if "outcome" in event:
        return "call-ended"
    if "from_queue" in event:
        return "transfer"
    return "survey-answered"
