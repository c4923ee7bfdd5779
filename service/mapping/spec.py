"""A mapping file, read and checked once at start (docs/sources.md, "The mapping file").

A mapping file is YAML (or JSON, which YAML reads too). Every problem is reported with the
file's line and the key's place in the file, e.g.
`genesys.yaml:14: events[0].fields.channel: unknown key 'mapp' (known: cases, convert, ...)`.
Pure: the caller reads the text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jmespath
import yaml
from jmespath.exceptions import JMESPathError

from service.domain.events import EventKind
from service.mapping.functions import OPTIONS

KINDS = tuple(k.value for k in EventKind)
CONVERSIONS = ("string", "number", "integer", "boolean", "timestamp", "hash")
TIMESTAMP_FORMATS = ("rfc3339", "iso8601", "epoch_seconds", "epoch_millis")
NORMALIZERS = ("phone", "lower", "trim")
# Fields every event has, and those each kind requires (the contract, docs/events.md).
HEADER_FIELDS = ("occurred_at", "contact_id", "customer_id")
REQUIRED = {
    "call-ended": ("occurred_at", "contact_id", "started_at", "channel", "queue", "outcome"),
    "transfer": ("occurred_at", "contact_id", "from_queue", "to_queue"),
    "survey-answered": ("occurred_at", "contact_id", "source"),
}
MAX_EVENTS_PER_RECORD = 64
MAX_RULES = 32
MAX_FIELDS = 64
MAX_EXPRESSION = 2000
MAX_FILE_BYTES = 256 * 1024
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_PARAM_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PARAM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# A parameter's value lands inside an expression (`Attributes."${customer_attribute}"`): no
# quote or backslash, so it can never end the string it stands in.
_PARAM_VALUE_RE = re.compile(r"^[^\"'`\\\x00-\x1f]{1,128}$")

_FIELD_KEYS = frozenset({"path", "value", "first", "cases", "when", "default", "map",
                         "map_default", "convert", "format", "normalize", "scale", "optional"})
_RULE_KEYS = frozenset({"kind", "name", "when", "for_each", "fields"})
_TOP_KEYS = frozenset({"source", "description", "record_id", "params", "common", "events"})


class MappingError(ValueError):
    """A mapping file that cannot be used; the message names the file, line and key."""


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled JMESPath expression and its text (for messages)."""

    text: str
    compiled: Any

    def search(self, data: Any) -> Any:
        return self.compiled.search(data, options=OPTIONS)


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """Where one output field comes from and how it is converted."""

    where: str  # its place in the file, e.g. "events[0].fields.channel"
    line: int
    path: Expression | None = None
    constant: Any = None
    has_constant: bool = False
    first: tuple[FieldSpec, ...] = ()
    cases: tuple[tuple[Expression, FieldSpec], ...] = ()
    default: Any = None
    has_default: bool = False
    table: Mapping[str, Any] | None = None
    table_default: Any = None
    has_table_default: bool = False
    convert: str | None = None
    fmt: str = "rfc3339"
    normalize: str | None = None
    scale: float | None = None
    optional: bool = False

    def describe(self) -> str:
        """Where the value is read, for a message: the expression(s)."""
        if self.path is not None:
            return self.path.text
        if self.first:
            return " | ".join(f.describe() for f in self.first)
        if self.cases:
            return "cases"
        return "constant"


@dataclass(frozen=True, slots=True)
class Rule:
    """Which records become one kind of event, and the event's fields."""

    kind: str
    name: str
    line: int
    when: Expression | None
    for_each: Expression | None
    fields: Mapping[str, FieldSpec]


@dataclass(frozen=True, slots=True)
class MappingSpec:
    source: str
    origin: str  # file name, for messages
    record_id: FieldSpec
    common: Mapping[str, FieldSpec]
    rules: tuple[Rule, ...]
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def uses_hash(self) -> bool:
        def walk(spec: FieldSpec) -> bool:
            return (spec.convert == "hash" or any(walk(f) for f in spec.first)
                    or any(walk(f) for _, f in spec.cases))

        specs = [self.record_id, *self.common.values()]
        specs += [f for rule in self.rules for f in rule.fields.values()]
        return any(walk(s) for s in specs)


class _Reader:
    """Walks the loaded document with the line of every key at hand."""

    def __init__(self, origin: str, lines: dict[tuple[Any, ...], int],
                 params: Mapping[str, str]) -> None:
        self.origin = origin
        self.lines = lines
        self.params = params

    def line(self, path: tuple[Any, ...]) -> int:
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path, 1)

    def error(self, path: tuple[Any, ...], message: str) -> MappingError:
        where = _dotted(path)
        return MappingError(f"{self.origin}:{self.line(path)}: {where + ': ' if where else ''}"
                            f"{message}")

    def keys(self, value: Any, path: tuple[Any, ...], known: frozenset[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping of keys, got {_type(value)}")
        for key in value:
            if not isinstance(key, str) or key not in known:
                raise self.error((*path, key), f"unknown key {key!r} "
                                 f"(known: {', '.join(sorted(known))})")
        return value

    def substitute(self, text: str, path: tuple[Any, ...]) -> str:
        """`${name}` replaced by the parameter's value."""

        def one(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in self.params:
                raise self.error(path, f"unknown parameter ${{{name}}} (declare it under "
                                 "`params`)")
            return self.params[name]

        return _PARAM_RE.sub(one, text)

    def constant(self, value: Any, path: tuple[Any, ...]) -> Any:
        _check_json(self, value, path)
        return self.substitute(value, path) if isinstance(value, str) else value

    def expression(self, value: Any, path: tuple[Any, ...]) -> Expression:
        if not isinstance(value, str) or not value.strip():
            raise self.error(path, f"expected a JMESPath expression (a string), got "
                             f"{_type(value)}")
        if len(value) > MAX_EXPRESSION:
            raise self.error(path, f"the expression is over {MAX_EXPRESSION} characters")

        text = self.substitute(value, path)
        try:
            compiled = jmespath.compile(text)
        except JMESPathError as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise self.error(path, f"not a valid JMESPath expression {text!r}: {detail}"
                             ) from None
        return Expression(text, compiled)

    def field_spec(self, value: Any, path: tuple[Any, ...], *, nested: bool = False
                   ) -> FieldSpec:
        where = _dotted(path)
        line = self.line(path)
        if isinstance(value, str):
            return FieldSpec(where, line, path=self.expression(value, path))
        spec = self.keys(value, path, _FIELD_KEYS)
        sources = [k for k in ("path", "value", "first", "cases") if k in spec]
        if len(sources) != 1:
            raise self.error(path, "give exactly one of path, value, first, cases "
                             f"(got {', '.join(sources) or 'none'})")
        if "when" in spec and not nested:
            raise self.error((*path, "when"), "`when` belongs in an item of `cases`")
        kwargs: dict[str, Any] = {}
        if "path" in spec:
            kwargs["path"] = self.expression(spec["path"], (*path, "path"))
        elif "value" in spec:
            kwargs.update(constant=self.constant(spec["value"], (*path, "value")),
                          has_constant=True)
        elif "first" in spec:
            items = spec["first"]
            if not isinstance(items, list) or not items:
                raise self.error((*path, "first"), "expected a list of field specs")
            kwargs["first"] = tuple(self.field_spec(item, (*path, "first", i), nested=True)
                                    for i, item in enumerate(items))
        else:
            items = spec["cases"]
            if not isinstance(items, list) or not items:
                raise self.error((*path, "cases"), "expected a list of cases, each with "
                                 "`when` and a value")
            cases = []
            for i, item in enumerate(items):
                item_path = (*path, "cases", i)
                if not isinstance(item, dict) or "when" not in item:
                    raise self.error(item_path, "each case needs `when` (an expression)")
                cases.append((self.expression(item["when"], (*item_path, "when")),
                              self.field_spec({k: v for k, v in item.items() if k != "when"},
                                              item_path, nested=True)))
            kwargs["cases"] = tuple(cases)
        if "default" in spec:
            kwargs.update(default=self.constant(spec["default"], (*path, "default")),
                          has_default=True)
        if "map" in spec:
            table = spec["map"]
            if not isinstance(table, dict) or not table:
                raise self.error((*path, "map"), "expected a table of source value: value")
            kwargs["table"] = {str(k): self.constant(v, (*path, "map", k))
                               for k, v in table.items()}
        if "map_default" in spec:
            if "map" not in spec:
                raise self.error((*path, "map_default"), "`map_default` needs `map`")
            kwargs.update(table_default=self.constant(spec["map_default"],
                                                      (*path, "map_default")),
                          has_table_default=True)
        if "convert" in spec:
            if spec["convert"] not in CONVERSIONS:
                raise self.error((*path, "convert"), f"expected one of "
                                 f"{', '.join(CONVERSIONS)}, got {spec['convert']!r}")
            kwargs["convert"] = spec["convert"]
        if "format" in spec:
            fmt = spec["format"]
            if kwargs.get("convert") != "timestamp":
                raise self.error((*path, "format"), "`format` goes with convert: timestamp")
            if not isinstance(fmt, str) or (fmt not in TIMESTAMP_FORMATS and "%" not in fmt):
                raise self.error((*path, "format"), f"expected one of "
                                 f"{', '.join(TIMESTAMP_FORMATS)} or a strptime pattern "
                                 f"(with %), got {fmt!r}")
            kwargs["fmt"] = fmt
        if "normalize" in spec:
            if spec["normalize"] not in NORMALIZERS:
                raise self.error((*path, "normalize"), f"expected one of "
                                 f"{', '.join(NORMALIZERS)}, got {spec['normalize']!r}")
            kwargs["normalize"] = spec["normalize"]
        if "scale" in spec:
            scale = spec["scale"]
            if isinstance(scale, bool) or not isinstance(scale, int | float):
                raise self.error((*path, "scale"), f"expected a number, got {_type(scale)}")
            kwargs["scale"] = float(scale)
        if "optional" in spec:
            if not isinstance(spec["optional"], bool):
                raise self.error((*path, "optional"), "expected true or false")
            kwargs["optional"] = spec["optional"]
        return FieldSpec(where, line, **kwargs)

    def fields(self, value: Any, path: tuple[Any, ...]) -> dict[str, FieldSpec]:
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping of field: spec, got {_type(value)}")
        if len(value) > MAX_FIELDS:
            raise self.error(path, f"at most {MAX_FIELDS} fields")
        out = {}
        for name, spec in value.items():
            if not isinstance(name, str) or not 1 <= len(name) <= 64:
                raise self.error((*path, name), "a field name is a string of 1-64 characters")
            if name == "event_id":
                raise self.error((*path, name), "event_id is derived from the source, the "
                                 "record id and the rule (it cannot be mapped)")
            out[name] = self.field_spec(spec, (*path, name))
        return out


def load_mapping(text: str, origin: str, overrides: Mapping[str, str] | None = None
                 ) -> MappingSpec:
    """Parse and check a mapping file's text; `overrides` replace its `params` defaults
    (CX_MAP_PARAMS). Raises MappingError naming the line."""
    if len(text.encode()) > MAX_FILE_BYTES:
        raise MappingError(f"{origin}: the file is over {MAX_FILE_BYTES} bytes")
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            document = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise MappingError(f"{origin}:{line}: not valid YAML: {problem}") from None
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        shared = _record_lines(node, (), lines, set())
        if shared is not None:
            raise MappingError(f"{origin}:{shared}: YAML anchors and aliases are not "
                               "supported: write the value out")
    probe = _Reader(origin, lines, {})
    top = probe.keys(document, (), _TOP_KEYS)
    for key in ("source", "record_id", "events"):
        if key not in top:
            raise probe.error((), f"missing key {key!r}")
    source = top["source"]
    if not isinstance(source, str) or not _NAME_RE.match(source):
        raise probe.error(("source",), "expected a name of 1-40 lower-case letters, digits, "
                          f"_ or -, got {source!r}")
    params = _params(probe, top.get("params", {}), overrides or {})
    reader = _Reader(origin, lines, params)
    record_id = reader.field_spec(top["record_id"], ("record_id",))
    common = reader.fields(top.get("common", {}), ("common",))
    for name in common:
        if name not in HEADER_FIELDS:
            raise reader.error(("common", name), f"common fields are {', '.join(HEADER_FIELDS)}")
    events = top["events"]
    if not isinstance(events, list) or not events:
        raise reader.error(("events",), "expected a list of rules")
    if len(events) > MAX_RULES:
        raise reader.error(("events",), f"at most {MAX_RULES} rules")
    rules: list[Rule] = []
    names: set[str] = set()
    for i, raw in enumerate(events):
        path: tuple[Any, ...] = ("events", i)
        rule = reader.keys(raw, path, _RULE_KEYS)
        kind = rule.get("kind")
        if kind not in KINDS:
            raise reader.error((*path, "kind"), f"expected one of {', '.join(KINDS)}, got "
                               f"{kind!r}")
        name = rule.get("name", kind)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise reader.error((*path, "name"), "expected a name of 1-40 lower-case letters, "
                               f"digits, _ or -, got {name!r}")
        if name in names:
            raise reader.error((*path, "name"), f"two rules named {name!r}: give each rule "
                               "of the same kind a `name` of its own (it is part of event_id)")
        names.add(name)
        when = reader.expression(rule["when"], (*path, "when")) if "when" in rule else None
        for_each = (reader.expression(rule["for_each"], (*path, "for_each"))
                    if "for_each" in rule else None)
        fields = {**common, **reader.fields(rule.get("fields", {}), (*path, "fields"))}
        for required in REQUIRED[kind]:
            if required not in fields:
                raise reader.error((*path, "fields"), f"a {kind} needs {required!r}")
        rules.append(Rule(kind=kind, name=name, line=reader.line(path), when=when,
                          for_each=for_each, fields=fields))
    unused = set(overrides or {}) - set(params)
    if unused:
        raise MappingError(f"{origin}: parameter(s) {', '.join(sorted(unused))} given but not "
                           f"declared under `params` (declared: {', '.join(sorted(params))})")
    return MappingSpec(source=source, origin=origin, record_id=record_id, common=common,
                       rules=tuple(rules), params=params)


def _params(reader: _Reader, declared: Any, overrides: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(declared, dict):
        raise reader.error(("params",), f"expected a mapping of name: default, got "
                           f"{_type(declared)}")
    params: dict[str, str] = {}
    for name, default in declared.items():
        if not isinstance(name, str) or not _PARAM_NAME_RE.match(name):
            raise reader.error(("params", name), "a parameter name is letters, digits and _")
        value = overrides.get(name, default)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise reader.error(("params", name), f"expected a string, got {_type(value)}")
        text = str(value)
        if not _PARAM_VALUE_RE.match(text):
            raise reader.error(("params", name), "a parameter value is 1-128 characters "
                               f"without quotes, backslashes or control characters, got "
                               f"{text[:40]!r}")
        params[name] = text
    return params


def _check_json(reader: _Reader, value: Any, path: tuple[Any, ...]) -> None:
    """Constants must be JSON values (YAML also has dates, sets...)."""
    if value is None or isinstance(value, str | bool | int | float):
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(reader, item, (*path, i))
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise reader.error(path, "object keys must be strings")
            _check_json(reader, item, (*path, key))
        return
    raise reader.error(path, f"expected a JSON value, got {type(value).__name__} (quote it)")


def _record_lines(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int],
                  seen: set[int]) -> int | None:
    """Record the line of every key; the line of a node met twice (an alias), if any."""
    if id(node) in seen:
        return int(node.start_mark.line) + 1
    seen.add(id(node))
    lines[path] = node.start_mark.line + 1
    children: list[tuple[tuple[Any, ...], yaml.Node, int | None]] = []
    if isinstance(node, yaml.MappingNode):
        children = [((*path, key_node.value), value_node, key_node.start_mark.line + 1)
                    for key_node, value_node in node.value]
    elif isinstance(node, yaml.SequenceNode):
        children = [((*path, i), item, None) for i, item in enumerate(node.value)]
    for child_path, child, key_line in children:
        shared = _record_lines(child, child_path, lines, seen)
        if shared is not None:
            return shared
        if key_line is not None:  # a key's line, rather than its value's
            lines[child_path] = key_line
    return None


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _type(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
