"""Bytes to domain objects and back: input events (size limit, orjson decoding, then the
contract) and customer states as the store keeps them (JSON)."""

from __future__ import annotations

import orjson

from service.domain.events import ContactEvent, Rejection, RejectReason
from service.domain.records import CustomerState
from service.domain.validation import DEFAULT_MAX_DEPTH, validate_event


def decode_event(kind: str, value: bytes | None, max_bytes: int,
                 max_depth: int = DEFAULT_MAX_DEPTH) -> ContactEvent | Rejection:
    """Decode and validate one message value of an input topic carrying `kind` events."""
    if value is None:
        return Rejection(RejectReason.NOT_JSON, f"{kind}: the message has no value")
    if len(value) > max_bytes:
        return Rejection(
            RejectReason.TOO_LARGE,
            f"{kind}: the value is {len(value)} bytes, over the limit of {max_bytes}",
        )
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return Rejection(RejectReason.NOT_JSON, f"{kind}: not valid UTF-8 JSON ({exc})")
    return validate_event(kind, obj, max_depth=max_depth)


def encode_state(state: CustomerState) -> bytes:
    return orjson.dumps(state.to_dict())


def decode_state(raw: bytes) -> CustomerState:
    return CustomerState.from_dict(orjson.loads(raw))
