"""Applies a mapping file to one source record: contract events, or the reasons it cannot.

Pure: bytes in, events and failures out. Every event is checked by the worker's own contract
validation before it is returned, so what `cx-stream map` publishes is what the worker
accepts; a record that cannot be mapped yields a failure naming the field (and where it was
read), which becomes a dead letter.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from jmespath.exceptions import JMESPathError

from service.domain.events import Rejection, RejectReason
from service.domain.validation import nesting_exceeds, parse_rfc3339, validate_event
from service.mapping.spec import (
    MAX_EVENTS_PER_RECORD,
    REQUIRED,
    FieldSpec,
    MappingSpec,
    Rule,
)

MAX_STRING = 1024  # characters of any mapped string (contract ids are checked at 128)
MAX_LIST = 64  # items of a mapped list (e.g. topics; the contract allows 10)
MAX_RECORD_ID = 256  # Amazon Connect ids are up to 256 characters
DEFAULT_MAX_RECORD_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class MapLimits:
    """Bounds on what a source record may hold (CX_MAP_MAX_RECORD_BYTES, CX_MAX_EVENT_DEPTH)."""

    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    max_depth: int = 32


@dataclass(frozen=True, slots=True)
class MappedEvent:
    kind: str
    key: bytes | None
    event: dict[str, Any]

    @property
    def event_id(self) -> str:
        return str(self.event["event_id"])


@dataclass(frozen=True, slots=True)
class Unmappable:
    """Why a record (or one rule's event of it) cannot be mapped."""

    reason: RejectReason
    message: str
    field: str | None = None
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class RecordResult:
    events: list[MappedEvent] = field(default_factory=list)
    failures: list[Unmappable] = field(default_factory=list)
    record_id: str | None = None


class _Fail(Exception):
    def __init__(self, reason: RejectReason, what: str) -> None:
        super().__init__(what)
        self.reason = reason
        self.what = what


def event_id_of(source: str, record_id: str, rule: str, index: int | None) -> str:
    """The contract event's id, derived from the record: mapping the record again gives the
    same id, which the worker drops as a duplicate. Over 128 characters it is hashed."""
    text = f"{source}:{record_id}:{rule}" + ("" if index is None else f":{index}")
    if len(text) <= 128:
        return text
    return f"{source}:sha256:{hashlib.sha256(text.encode()).hexdigest()[:40]}"


def map_record(spec: MappingSpec, value: bytes | None, *, salt: bytes = b"",
               limits: MapLimits = MapLimits()) -> RecordResult:
    """The events one raw record maps to, and a failure for each rule that could not."""
    source = spec.source
    if value is None:
        return _failed(RejectReason.NOT_JSON, f"{source}: the message has no value")
    if len(value) > limits.max_record_bytes:
        return _failed(RejectReason.TOO_LARGE, f"{source}: the record is {len(value)} bytes, "
                       f"over the limit of {limits.max_record_bytes}")
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return _failed(RejectReason.NOT_JSON, f"{source}: not valid UTF-8 JSON ({exc})")
    if not isinstance(record, dict):
        return _failed(RejectReason.NOT_OBJECT, f"{source}: the record must be a JSON object")
    if nesting_exceeds(record, limits.max_depth):
        return _failed(RejectReason.TOO_DEEP, f"{source}: objects and arrays nest more than "
                       f"{limits.max_depth} levels deep")
    try:
        rid = _value(spec.record_id, record, salt)
        if rid is None:
            raise _Fail(RejectReason.MISSING_FIELD, "missing")
        if isinstance(rid, bool) or not isinstance(rid, str | int):
            raise _Fail(RejectReason.WRONG_TYPE, f"must be a string, got {_json_type(rid)}")
        record_id = str(rid)
        if not 1 <= len(record_id) <= MAX_RECORD_ID:
            raise _Fail(RejectReason.INVALID_VALUE,
                        f"must be 1 to {MAX_RECORD_ID} characters, got {len(record_id)}")
    except _Fail as exc:
        return _failed(exc.reason, f"{source}: record_id from "
                       f"{spec.record_id.describe()}: {exc.what}", "record_id")
    result = RecordResult(record_id=record_id)
    for rule in spec.rules:
        _apply_rule(spec, rule, record, record_id, salt, limits, result)
    return result


def _apply_rule(spec: MappingSpec, rule: Rule, record: dict[str, Any], record_id: str,
                salt: bytes, limits: MapLimits, result: RecordResult) -> None:
    where = f"{spec.source} record {record_id[:60]!r}: {rule.kind} ({rule.name})"
    try:
        if rule.when is not None and not _truthy(rule.when.search(record)):
            return
        items: list[Any] | None = None
        if rule.for_each is not None:
            found = rule.for_each.search(record)
            if found is None:
                return
            if not isinstance(found, list):
                raise _Fail(RejectReason.WRONG_TYPE, f"for_each ({rule.for_each.text}) must "
                            f"give a list, got {_json_type(found)}")
            if len(found) > MAX_EVENTS_PER_RECORD:
                raise _Fail(RejectReason.INVALID_VALUE, f"for_each ({rule.for_each.text}) "
                            f"gave {len(found)} items, at most {MAX_EVENTS_PER_RECORD}")
            items = found
    except JMESPathError as exc:
        result.failures.append(Unmappable(RejectReason.INVALID_VALUE,
                                          f"{where}: the rule's expression failed: {exc}"))
        return
    except _Fail as exc:
        result.failures.append(Unmappable(exc.reason, f"{where}: {exc.what}"))
        return
    contexts: list[tuple[int | None, Any]] = (
        [(None, record)] if items is None else
        [(i, {"item": item, "index": i, "record": record}) for i, item in enumerate(items)])
    for index, context in contexts:
        event_id = event_id_of(spec.source, record_id, rule.name, index)
        event: dict[str, Any] = {"event_id": event_id}
        failed = False
        for name, fspec in rule.fields.items():
            data = record if spec.common.get(name) is fspec else context
            try:
                value = _value(fspec, data, salt)
            except _Fail as exc:
                result.failures.append(Unmappable(
                    exc.reason, f"{where}.{name} from {fspec.describe()}: {exc.what}",
                    name, event_id))
                failed = True
                break
            except JMESPathError as exc:
                result.failures.append(Unmappable(
                    RejectReason.INVALID_VALUE,
                    f"{where}.{name} from {fspec.describe()}: the expression failed: {exc}",
                    name, event_id))
                failed = True
                break
            if value is None:
                if name in REQUIRED[rule.kind] and not fspec.optional:
                    result.failures.append(Unmappable(
                        RejectReason.MISSING_FIELD,
                        f"{where}.{name} from {fspec.describe()}: missing", name, event_id))
                    failed = True
                    break
                if name == "customer_id":
                    event[name] = None
                continue
            event[name] = value
        if failed:
            continue
        event.setdefault("customer_id", None)
        event["source_system"] = spec.source
        event["source_record_id"] = record_id[:MAX_STRING]
        checked = validate_event(rule.kind, event, max_depth=limits.max_depth)
        if isinstance(checked, Rejection):
            failed_field = _field_of(checked.message)
            result.failures.append(Unmappable(checked.reason, f"{where}: {checked.message}",
                                              failed_field, event_id))
            continue
        result.events.append(MappedEvent(rule.kind, _key(event), event))


def _failed(reason: RejectReason, message: str, name: str | None = None) -> RecordResult:
    return RecordResult(failures=[Unmappable(reason, message, name)])


def _key(event: Mapping[str, Any]) -> bytes | None:
    customer = event.get("customer_id")
    if isinstance(customer, str) and customer:
        return customer.encode()
    contact = event.get("contact_id")
    return contact.encode() if isinstance(contact, str) else None


def _field_of(message: str) -> str | None:
    head = message.split(":", 1)[0]
    return head.split(".", 1)[1] if "." in head else None


def _truthy(value: Any) -> bool:
    """JMESPath's truth: false, null, "", [] and {} are false; 0 is true."""
    return not (value is None or value is False or value in ("", [], {}))


def _resolve(spec: FieldSpec, data: Any, salt: bytes) -> Any:
    if spec.path is not None:
        raw = spec.path.search(data)
    elif spec.has_constant:
        raw = spec.constant
    elif spec.first:
        raw = None
        for option in spec.first:
            raw = _value(option, data, salt)
            if raw is not None:
                break
    else:
        raw = None
        for when, option in spec.cases:
            if _truthy(when.search(data)):
                raw = _value(option, data, salt)
                break
    if raw is None and spec.has_default:
        raw = spec.default
    return raw


def _value(spec: FieldSpec, data: Any, salt: bytes) -> Any:
    raw = _resolve(spec, data, salt)
    if raw is None:
        return None
    if spec.table is not None:
        if isinstance(raw, dict | list):
            raise _Fail(RejectReason.WRONG_TYPE, f"must be a value of the table, got "
                        f"{_json_type(raw)}")
        key = ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
        if key in spec.table:
            raw = spec.table[key]
        elif spec.has_table_default:
            raw = spec.table_default
        else:
            known = ", ".join(list(spec.table)[:12])
            raise _Fail(RejectReason.INVALID_VALUE, f"{key[:40]!r} is not in the table "
                        f"(known: {known})")
        if raw is None:
            return None
    if spec.normalize is not None and isinstance(raw, str):
        raw = _normalize(raw, spec.normalize)
        if not raw:
            return None
    if spec.convert is not None:
        raw = _convert(raw, spec, salt)
        if raw is None:
            return None
    if spec.scale is not None:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise _Fail(RejectReason.WRONG_TYPE, f"must be a number to scale, got "
                        f"{_json_type(raw)}")
        raw = raw * spec.scale
    return _bounded(raw)


def _bounded(value: Any) -> Any:
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise _Fail(RejectReason.INVALID_VALUE, f"a string of {len(value)} characters, at "
                        f"most {MAX_STRING}")
        return value
    if isinstance(value, list):
        if len(value) > MAX_LIST:
            raise _Fail(RejectReason.INVALID_VALUE, f"a list of {len(value)} items, at most "
                        f"{MAX_LIST}")
        for item in value:
            if isinstance(item, dict | list):
                raise _Fail(RejectReason.WRONG_TYPE, "a list may hold only strings, numbers "
                            "and booleans")
            _bounded(item)
        return value
    if isinstance(value, dict):
        raise _Fail(RejectReason.WRONG_TYPE, "got an object: map a value inside it")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Fail(RejectReason.INVALID_VALUE, "not a finite number")
    return value


_PHONE_DROP = re.compile(r"[^0-9+]")


def _normalize(text: str, how: str) -> str:
    text = text.strip()
    if how == "lower":
        return text.lower()
    if how == "phone":
        if text.lower().startswith(("tel:", "sip:")):
            text = text[4:]
        text = text.split("@", 1)[0].split(";", 1)[0]
        digits = _PHONE_DROP.sub("", text)
        return digits[:1] + digits[1:].replace("+", "")
    return text


def _convert(raw: Any, spec: FieldSpec, salt: bytes) -> Any:
    how = spec.convert
    if how == "string":
        if isinstance(raw, str):
            return raw
        if isinstance(raw, int) and not isinstance(raw, bool):
            return str(raw)
        raise _Fail(RejectReason.WRONG_TYPE, f"must be a string, got {_json_type(raw)}")
    if how == "number":
        number = _number(raw)
        if number is None:
            raise _Fail(RejectReason.WRONG_TYPE, f"must be a number, got {_shown(raw)}")
        return number
    if how == "integer":
        number = _number(raw)
        if number is None or number != int(number):
            raise _Fail(RejectReason.WRONG_TYPE, f"must be a whole number, got {_shown(raw)}")
        return int(number)
    if how == "boolean":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower() if isinstance(raw, str | int) else ""
        if text in ("true", "yes", "y", "1"):
            return True
        if text in ("false", "no", "n", "0"):
            return False
        raise _Fail(RejectReason.WRONG_TYPE, f"must be true or false, got {_shown(raw)}")
    if how == "timestamp":
        return _timestamp(raw, spec.fmt)
    # hash
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str):
        raise _Fail(RejectReason.WRONG_TYPE, f"must be a string to hash, got {_json_type(raw)}")
    if len(raw) > MAX_STRING:
        raise _Fail(RejectReason.INVALID_VALUE, f"a string of {len(raw)} characters, at most "
                    f"{MAX_STRING}")
    return "h-" + hmac.new(salt, raw.encode(), hashlib.sha256).hexdigest()[:32]


def _number(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str) and len(raw) <= 40:
        try:
            value = float(raw.strip())
        except ValueError:
            return None
    else:
        return None
    return value if math.isfinite(value) else None


def _timestamp(raw: Any, fmt: str) -> str:
    moment: datetime | None = None
    try:
        if fmt in ("epoch_seconds", "epoch_millis"):
            number = _number(raw)
            if number is not None:
                moment = datetime.fromtimestamp(
                    number / (1000 if fmt == "epoch_millis" else 1), UTC)
        elif isinstance(raw, str) and len(raw) <= 64:
            if fmt == "rfc3339":
                moment = parse_rfc3339(raw)
            elif fmt == "iso8601":
                moment = datetime.fromisoformat(raw.replace("z", "Z"))
            else:
                moment = datetime.strptime(raw, fmt)
    except (ValueError, OverflowError, OSError):
        moment = None
    if moment is None:
        what = "an RFC 3339 timestamp" if fmt == "rfc3339" else f"a timestamp ({fmt})"
        raise _Fail(RejectReason.BAD_TIMESTAMP, f"must be {what}, got {_shown(raw)}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:
        raise _Fail(RejectReason.BAD_TIMESTAMP, f"out of range, got {_shown(raw)}") from None
    if utc.year < 1 or utc.year > 9999:
        raise _Fail(RejectReason.BAD_TIMESTAMP, f"out of range, got {_shown(raw)}")
    return utc.isoformat().replace("+00:00", "Z")


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return repr(value[:40])
    if isinstance(value, bool | int | float):
        return repr(value)
    return _json_type(value)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
