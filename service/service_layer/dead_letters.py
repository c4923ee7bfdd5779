"""Dead letters: the record that stands for an input message the engine could not apply
(schemas/dead-letter.schema.json), and the small one that stands for an output the broker
refused as too large."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from service.domain.events import RejectReason

PROCESSING_ERROR = RejectReason.PROCESSING_ERROR.value
DEAD_LETTER_MAX_COPY = 64 * 1024  # CX_DEAD_LETTER_MAX_COPY
_MESSAGE_MAX = 2000  # characters of a dead letter's message


@dataclass(frozen=True, slots=True)
class InputMessage:
    """One message of an input topic, as the consumer delivered it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None
    redriven: bool = False  # sent back from the dead-letter topic (`cx-stream redrive`)


def dead_letter_record(msg: InputMessage, reason: str, message: str, now: datetime,
                       max_copy: int = DEAD_LETTER_MAX_COPY) -> dict[str, Any]:
    """The dead-letter JSON object (schemas/dead-letter.schema.json) for one message. The
    copies of a value or key longer than `max_copy` bytes are cut there (`truncated`), with
    their full length and SHA-256, so that the record always fits the topic."""
    key_text: str | None = None
    key_copy = value_copy = None
    if msg.key is not None:
        key_copy = msg.key[:max_copy]
        try:
            msg.key.decode("utf-8")
            key_text = key_copy.decode("utf-8", "ignore")  # a cut may split a character
        except UnicodeDecodeError:
            key_text = None
    if msg.value is not None:
        value_copy = msg.value[:max_copy]
    event_id: str | None = None
    if reason not in (RejectReason.TOO_LARGE, RejectReason.NOT_JSON) and msg.value:
        try:
            obj = orjson.loads(msg.value)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("event_id"), str):
            event_id = obj["event_id"][:128]
    return {
        "topic": msg.topic,
        "partition": msg.partition,
        "offset": msg.offset,
        "timestamp_ms": msg.timestamp_ms,
        "key": key_text,
        "key_base64": None if key_copy is None else base64.b64encode(key_copy).decode(),
        "value_base64": None if value_copy is None else base64.b64encode(value_copy).decode(),
        "reason": reason,
        "message": message[:_MESSAGE_MAX],
        "event_id": event_id,
        "dead_lettered_at": timestamp_text(now),
        "redriven": msg.redriven,
        "truncated": (msg.key is not None and len(msg.key) > max_copy)
        or (msg.value is not None and len(msg.value) > max_copy),
        "key_bytes": None if msg.key is None else len(msg.key),
        "key_sha256": None if msg.key is None else hashlib.sha256(msg.key).hexdigest(),
        "value_bytes": None if msg.value is None else len(msg.value),
        "value_sha256": None if msg.value is None else hashlib.sha256(msg.value).hexdigest(),
    }


def dead_letter_key(msg: InputMessage, max_copy: int = DEAD_LETTER_MAX_COPY) -> bytes | None:
    """The Kafka key of a message's dead letter: the original key (cut as its copy is)."""
    return None if msg.key is None else msg.key[:max_copy]


def output_stub(topic: str, key: bytes | None, value: bytes, limit: int, now: datetime,
                dead_letter_topic: str) -> bytes:
    """A small dead letter standing for a record Kafka refused as too large: for a dead letter
    its copies are left out; for an enriched contact or an alert, it names the record."""
    size = len(value) + len(key or b"")
    note = f"the record of {size} bytes is over the limit of {limit} bytes"
    if topic == dead_letter_topic:
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            record.update(key=None, key_base64=None, value_base64=None, truncated=True,
                          message=f"{record.get('message', '')} ({note}: copies left out)"
                          [:_MESSAGE_MAX])
            return orjson.dumps(record)
    key_text = None if key is None else key[:1024].decode("utf-8", "replace")
    return orjson.dumps({
        "topic": topic, "partition": None, "offset": None, "timestamp_ms": None,
        "key": key_text, "key_base64": None, "value_base64": None,
        "reason": PROCESSING_ERROR, "message": f"{topic}: {note}; not published",
        "event_id": None, "dead_lettered_at": timestamp_text(now), "truncated": True,
        "key_bytes": None if key is None else len(key),
        "key_sha256": None if key is None else hashlib.sha256(key).hexdigest(),
        "value_bytes": len(value), "value_sha256": hashlib.sha256(value).hexdigest(),
    })


def key_text(key: bytes | None) -> str | None:
    """A message key as text (the customer id, by the contract), None when it is not UTF-8."""
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def timestamp_text(now: datetime) -> str:
    return now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
