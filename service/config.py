"""Configuration from `CX_` environment variables, validated once at start.

Every variable is declared once in `VARIABLES`; `docs/configuration.md` is checked against it
by a test, so the documented table and the code cannot drift apart.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from service.domain.costs import ContactCosts, parse_costs
from service.domain.durations import parse_duration
from service.domain.policy import PerceptionPolicy, Policy, QueuePolicy
from service.redis_url import parse_redis_url

T = TypeVar("T", int, float)


class ConfigError(ValueError):
    """A `CX_` variable holds a value the service cannot use; the message names it."""


@dataclass(frozen=True)
class Variable:
    name: str
    default: str
    meaning: str
    parse: Callable[[str], Any]
    field: str


def _bounded(convert: Callable[[str], T], what: str, low: T, high: T) -> Callable[[str], T]:
    """A parser of `what` (e.g. "a whole number") between `low` and `high` inclusive."""

    def parse(text: str) -> T:
        try:
            value = convert(text.replace("_", ""))
        except ValueError:
            raise ValueError(f"expected {what} from {low:g} to {high:g}, got {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"expected {what} from {low:g} to {high:g}, got {value:g}")
        return value

    return parse


def _int_range(low: int, high: int) -> Callable[[str], int]:
    return _bounded(int, "a whole number", low, high)


def _positive_seconds(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"expected a duration above zero, got {text!r}")
    return seconds


_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _topic(text: str) -> str:
    if not _TOPIC_RE.match(text) or text in {".", ".."}:
        raise ValueError(f"not a valid Kafka topic name: {text!r}")
    return text


def _nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _bootstrap(text: str) -> str:
    servers = [s.strip() for s in text.split(",") if s.strip()]
    if not servers:
        raise ValueError("expected host:port[,host:port...]")
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"expected host:port, got {server!r}")
    return ",".join(servers)


def _redis_url(text: str) -> str:
    parse_redis_url(text)  # raises ValueError saying what is wrong
    return text


def _cache_seconds(text: str) -> float:
    seconds = parse_duration(text)
    if not 0 <= seconds <= 60:
        raise ValueError(f"expected a duration from 0 to 60s, got {text!r}")
    return seconds


def _event_loop(text: str) -> str:
    value = text.strip().lower()
    if value not in {"uvloop", "asyncio"}:
        raise ValueError(f"expected uvloop or asyncio, got {text!r}")
    return value


def _optional_seconds(text: str) -> float | None:
    return _positive_seconds(text) if text.strip() else None


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


_score = _bounded(float, "a number", 0.0, 100.0)
_ratio = _bounded(float, "a number", 0.0, 1.0)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


_QUEUE_KEYS = {"repeat_window": _positive_seconds, "transfer_breaks_fcr": bool,
               "repeat_same_reason": bool, "repeat_same_channel": bool}


def _queue_policies(text: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for queue, rules in _json_object(text).items():
        if not isinstance(rules, dict):
            raise ValueError(f"queue {queue!r}: expected an object of rules")
        parsed: dict[str, Any] = {}
        for name, value in rules.items():
            if name not in _QUEUE_KEYS:
                raise ValueError(f"queue {queue!r}: unknown rule {name!r} "
                                 f"(known: {', '.join(sorted(_QUEUE_KEYS))})")
            if name == "repeat_window":
                parsed[name] = _positive_seconds(str(value))
            elif not isinstance(value, bool):
                raise ValueError(f"queue {queue!r}: {name} must be true or false")
            else:
                parsed[name] = value
        out[queue] = parsed
    return out


def _segment_baselines(text: str) -> dict[str, float]:
    return {segment: _score(str(v)) for segment, v in _json_object(text).items()}


def _segment_values(text: str) -> dict[str, float]:
    parse = _bounded(float, "a number", 0.0, 1e12)
    return {segment: parse(str(v)) for segment, v in _json_object(text).items()}


def _windows(text: str) -> tuple[tuple[str, float], ...]:
    names = [w.strip() for w in text.split(",") if w.strip()]
    if not names:
        raise ValueError("expected durations such as 1h,24h,7d")
    windows = []
    for name in names:
        seconds = _positive_seconds(name)
        if seconds % 3600:
            raise ValueError(f"windows are whole hours, got {name!r}")
        windows.append((name, seconds))
    return tuple(windows)


def _policy_version(text: str) -> str:
    return str(_int_range(1, 1_000_000)(text))


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError(f"expected debug, info, warning or error, got {text!r}")
    return level


def _api_auth(text: str) -> str:
    value = text.strip().lower()
    if value not in {"auto", "token", "none"}:
        raise ValueError(f"expected auto, token or none, got {text!r}")
    return value


def _secret(text: str) -> str:
    return text.strip()


def _map_params(text: str) -> dict[str, str]:
    params = _json_object(text)
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"parameter {name!r}: expected a string")
    return {name: str(value) for name, value in params.items()}


def _optional_topic(text: str) -> str:
    return _topic(text.strip()) if text.strip() else ""


def _erasure_key(text: str) -> str:
    key = text.strip()
    if key and len(key) < 16:
        raise ValueError("the key must have at least 16 characters")
    return key


# Token values shown in the project's examples (deploy/k8s/overlays/example): never accepted.
PLACEHOLDER_TOKENS = frozenset({"replace-with-a-long-random-token"})
MIN_TOKEN_LENGTH = 16


def _check_token(token: str) -> str:
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"each token must have at least {MIN_TOKEN_LENGTH} characters")
    if token in PLACEHOLDER_TOKENS:
        raise ValueError(f"{token!r} is the placeholder of the example Secret, not a token: "
                         "set a random one (e.g. `openssl rand -base64 32`)")
    return token


def _optional_token(text: str) -> str:
    token = text.strip()
    return _check_token(token) if token else ""


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(_check_token(t.strip()) for t in text.split(",") if t.strip())


_LABEL = r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


def host_name(text: str) -> str | None:
    """The host of a `Host` header or a CX_API_ALLOWED_HOSTS entry, without its port, in
    lower case, without a trailing dot, IPv6 in brackets; None when it is not a host name."""
    text = text.strip().lower()
    if text.startswith("["):
        name, sep, rest = text.partition("]")
        if not sep or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return None
        try:
            return f"[{ipaddress.IPv6Address(name[1:]).compressed}]"
        except ValueError:
            return None
    if text.count(":") > 1:  # an IPv6 address without brackets (configuration only)
        try:
            return f"[{ipaddress.IPv6Address(text).compressed}]"
        except ValueError:
            return None
    name, sep, port = text.partition(":")
    if sep and not port.isdigit():
        return None
    name = name[:-1] if name.endswith(".") else name
    return name if _HOSTNAME_RE.match(name) else None


def _allowed_hosts(text: str) -> tuple[str, ...]:
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if not entries:
        raise ValueError("expected host names (localhost,127.0.0.1,[::1]) or *")
    hosts = []
    for entry in entries:
        name = "*" if entry == "*" else host_name(entry)
        with_port = entry.count(":") == 1 or (entry.startswith("[") and not entry.endswith("]"))
        if name is None or with_port:
            raise ValueError(f"expected a host name or address without a port, got {entry!r}")
        hosts.append(name)
    return tuple(hosts)


def _origins(text: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
            raise ValueError(f"expected * or origins such as https://host[:port], got {origin!r}")
    return origins


_KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _kafka_protocol(text: str) -> str:
    value = text.strip().upper()
    if value not in _KAFKA_PROTOCOLS:
        raise ValueError(f"expected one of {', '.join(_KAFKA_PROTOCOLS)}, got {text!r}")
    return value


def _sasl_mechanism(text: str) -> str:
    value = text.strip().upper()
    if value not in _SASL_MECHANISMS:
        raise ValueError(f"expected one of {', '.join(_SASL_MECHANISMS)}, got {text!r}")
    return value


def _check_security(s: Settings) -> None:
    """Combinations of the security variables that cannot work (docs/security.md)."""
    if s.kafka_security_protocol.startswith("SASL_"):
        if not s.kafka_sasl_username:
            raise ConfigError(f"CX_KAFKA_SASL_USERNAME: required with {s.kafka_security_protocol}")
        if bool(s.kafka_sasl_password) == bool(s.kafka_sasl_password_file):
            raise ConfigError("CX_KAFKA_SASL_PASSWORD: give it or CX_KAFKA_SASL_PASSWORD_FILE "
                              f"(one of the two) with {s.kafka_security_protocol}")
    if bool(s.kafka_ssl_certfile) != bool(s.kafka_ssl_keyfile):
        raise ConfigError("CX_KAFKA_SSL_CERTFILE: give it together with CX_KAFKA_SSL_KEYFILE")
    if bool(s.redis_tls_cert_file) != bool(s.redis_tls_key_file):
        raise ConfigError("CX_REDIS_TLS_CERT_FILE: give it together with CX_REDIS_TLS_KEY_FILE")
    tls = s.redis_tls_ca_file or s.redis_tls_cert_file
    if tls and not (s.redis_url.startswith("rediss://") or s.redis_url.startswith("rediss+")):
        raise ConfigError("CX_REDIS_TLS_CA_FILE: the CX_REDIS_TLS_* variables need a rediss:// "
                          "(or rediss+cluster://, rediss+sentinel://) CX_REDIS_URL")
    if s.redis_password and s.redis_password_file:
        raise ConfigError("CX_REDIS_PASSWORD: give it or CX_REDIS_PASSWORD_FILE, not both")
    if s.erasure_key and s.erasure_key_file:
        raise ConfigError("CX_ERASURE_KEY: give it or CX_ERASURE_KEY_FILE, not both")
    if s.map_hash_salt and s.map_hash_salt_file:
        raise ConfigError("CX_MAP_HASH_SALT: give it or CX_MAP_HASH_SALT_FILE, not both")
    if s.api_auth == "token" and not (s.api_tokens or s.api_tokens_file):
        raise ConfigError("CX_API_AUTH: token needs CX_API_TOKENS or CX_API_TOKENS_FILE")


VARIABLES: tuple[Variable, ...] = (
    Variable("CX_KAFKA_BOOTSTRAP", "127.0.0.1:19092",
             "Kafka bootstrap servers, `host:port[,host:port...]`.", _bootstrap, "kafka_bootstrap"),
    Variable("CX_REDIS_URL", "redis://127.0.0.1:16379/0",
             "Redis URL; its scheme picks the mode ([redis-modes.md](redis-modes.md)): "
             "`redis://host:port/db` (`rediss://` for TLS, `unix://`) one server; "
             "`redis+cluster://host:port[,host:port...]` a Redis Cluster, given by seed nodes; "
             "`redis+sentinel://host:port[,host:port...]/service[/db]` the primary that "
             "Sentinel names `service`.", _redis_url, "redis_url"),
    Variable("CX_GROUP_ID", "cx-stream",
             "Kafka consumer group of the workers (`-vN` appended from policy version 2 on, "
             "see CX_POLICY_VERSION); also the Faust application id.",
             _nonempty, "group_id"),
    Variable("CX_KEY_PREFIX", "cx",
             "Prefix of every Redis key the service writes, so several deployments can share "
             "one Redis (policy version N from 2 on keeps its state under `PREFIX:vN`).",
             _nonempty, "key_prefix"),
    Variable("CX_TOPIC_CALL_ENDED", "call-ended", "Input topic of call-ended events.",
             _topic, "topic_call_ended"),
    Variable("CX_TOPIC_TRANSFER", "transfer", "Input topic of transfer events.",
             _topic, "topic_transfer"),
    Variable("CX_TOPIC_SURVEY_ANSWERED", "survey-answered",
             "Input topic of survey-answered events.", _topic, "topic_survey_answered"),
    Variable("CX_TOPIC_DEAD_LETTER", "dead-letter",
             "Output topic for events that cannot be applied, with the reason.",
             _topic, "topic_dead_letter"),
    Variable("CX_TOPIC_CONTACT_ENRICHED", "contact-enriched",
             "Output topic of enriched contacts (compacted, key contact_id).",
             _topic, "topic_contact_enriched"),
    Variable("CX_TOPIC_CUSTOMER_ALERTS", "customer-alerts",
             "Output topic of customer at-risk alerts (key customer_id).",
             _topic, "topic_customer_alerts"),
    Variable("CX_TOPIC_PARTITIONS", "6",
             "Partitions of each input topic when `cx-stream topics` creates them. The three "
             "input topics always get the same count, so one customer's events share a "
             "partition number.", _int_range(1, 10_000), "topic_partitions"),
    Variable("CX_TOPIC_REPLICATION", "1",
             "Replication factor of the topics `cx-stream topics` creates.",
             _int_range(1, 32), "topic_replication"),
    Variable("CX_MAX_EVENT_BYTES", "65536",
             "Largest accepted event value in bytes; larger ones are dead-lettered as "
             "`too_large`.", _int_range(64, 16 * 1024 * 1024), "max_event_bytes"),
    Variable("CX_DEAD_LETTER_MAX_COPY", "65536",
             "Most bytes of the original value, and of the original key, copied into a "
             "dead-letter record; a longer one is cut there, with its full length and SHA-256 "
             "kept, so that a dead letter always fits the topic (such a record cannot be "
             "redriven).", _int_range(0, 16 * 1024 * 1024), "dead_letter_max_copy"),
    Variable("CX_MAX_EVENT_DEPTH", "32",
             "Most levels of nested objects and arrays in an event (the event object is level "
             "1); deeper ones are dead-lettered as `too_deep`. At most 200: every output must "
             "still be writable as JSON.", _int_range(2, 200), "max_event_depth"),
    Variable("CX_MAX_CLOCK_SKEW", "1h",
             "How far an event's `occurred_at` may be ahead of its Kafka record's timestamp; "
             "further ahead it is dead-lettered as `from_future`, so that no event can move a "
             "watermark into the future. Event times before the timestamp are always accepted.",
             _positive_seconds, "max_clock_skew"),
    Variable("CX_MAX_CONTACTS_PER_CUSTOMER", "1000",
             "Most contacts one customer can have in its window. Past it the customer is marked "
             "noisy (a shared placeholder id, a test line, a bot): its further contacts are "
             "kept apart and counted as unidentified callers' (no repeat detection), so one id "
             "cannot grow a state without bound.", _int_range(1, 1_000_000),
             "max_contacts_per_customer"),
    Variable("CX_BATCH_MAX_EVENTS", "500",
             "Most events the worker applies in one batch (one Redis round trip).",
             _int_range(1, 100_000), "batch_max_events"),
    Variable("CX_REBUILD_BATCH_MAX_EVENTS", "20000",
             "Most events `cx-stream rebuild` applies in one batch. Larger than a worker's: a "
             "customer's events of one batch cost one read and one write of its state, and a "
             "replay has no latency to keep (each batch's commit holds Redis a little longer).",
             _int_range(1, 100_000), "rebuild_batch_max_events"),
    Variable("CX_STATE_CACHE_MB", "16",
             "Memory (estimated MB) for customer states the worker keeps between batches, so "
             "that it need not read and decode them again; 0 keeps none. Used only while no "
             "other worker wrote the partition since (docs/operations.md).",
             _int_range(0, 65_536), "state_cache_mb"),
    Variable("CX_BATCH_MAX_WAIT", "50ms",
             "Longest time the worker waits to fill a batch before applying what it has.",
             _positive_seconds, "batch_max_wait"),
    Variable("CX_KAFKA_SESSION_TIMEOUT", "45s",
             "How long the group waits for a silent worker before giving its partitions to "
             "the others (Kafka's session.timeout.ms; the broker allows 6s to 5m).",
             _positive_seconds, "kafka_session_timeout"),
    Variable("CX_COMMIT_INTERVAL", "1s",
             "How often the worker commits the offsets of applied events to Kafka.",
             _positive_seconds, "commit_interval"),
    Variable("CX_REPEAT_WINDOW", "7d",
             "Repeat window W: a handled contact followed by another handled contact of the "
             "same customer within W is unresolved, and the later one is a repeat.",
             _positive_seconds, "repeat_window"),
    Variable("CX_ALLOWED_LATENESS", "",
             "How far behind the watermark an event may be and still count; older ones are "
             "dead-lettered as `too_late`. Empty means the repeat window.",
             _optional_seconds, "allowed_lateness"),
    Variable("CX_TRANSFER_BREAKS_FCR", "true",
             "Whether a transferred contact counts as not resolved first time.",
             _boolean, "transfer_breaks_fcr"),
    Variable("CX_REPEAT_SAME_REASON", "false",
             "Count a repeat only when both contacts have the same `reason`.",
             _boolean, "repeat_same_reason"),
    Variable("CX_REPEAT_SAME_CHANNEL", "false",
             "Count a repeat only when both contacts have the same `channel`.",
             _boolean, "repeat_same_channel"),
    Variable("CX_QUEUE_POLICIES", "{}",
             "Per-queue overrides, JSON: `{\"sales\": {\"repeat_window\": \"72h\", "
             "\"transfer_breaks_fcr\": false, \"repeat_same_reason\": true}}`.",
             _queue_policies, "queue_policies"),
    Variable("CX_POLICY_VERSION", "1",
             "Version (1, 2, ...) of the rules in force: the worker writes the state of this "
             "version, every enriched contact carries it, and a version keeps the rules it was "
             "first run with; new rules need a new version and `cx-stream rebuild` "
             "(docs/rebuild.md).", _policy_version, "policy_version"),
    Variable("CX_PERCEPTION_BASELINE", "70",
             "Perception score (0-100) of a customer with no history.",
             _score, "perception_baseline"),
    Variable("CX_PERCEPTION_SEGMENT_BASELINES", "{}",
             "Baselines per segment, JSON: `{\"gold\": 75}`.",
             _segment_baselines, "perception_segment_baselines"),
    Variable("CX_PERCEPTION_HALF_LIFE", "14d",
             "Time for the distance between the score and the baseline to halve, with no "
             "new contact.", _positive_seconds, "perception_half_life"),
    Variable("CX_PERCEPTION_WAIT_TARGET", "60s",
             "Wait the centre aims for; longer waits lower the score.",
             _positive_seconds, "perception_wait_target"),
    Variable("CX_AT_RISK_BELOW", "40",
             "A customer whose score falls below this is at risk.", _score, "at_risk_below"),
    Variable("CX_AT_RISK_RECOVER_AT", "50",
             "An at-risk customer leaves at-risk when the score is back at this (hysteresis).",
             _score, "at_risk_recover_at"),
    Variable("CX_AT_RISK_DROP", "25",
             "A fall of this many points within CX_AT_RISK_DROP_PERIOD also puts a customer "
             "at risk.", _score, "at_risk_drop"),
    Variable("CX_AT_RISK_DROP_PERIOD", "7d", "The period of CX_AT_RISK_DROP.",
             _positive_seconds, "at_risk_drop_period"),
    Variable("CX_STATE_IDLE_TTL", "90d",
             "Wall-clock time after which a customer's state that was not written is dropped "
             "by Redis (event-time pruning normally comes first).",
             _positive_seconds, "state_idle_ttl"),
    Variable("CX_COUNTER_RETENTION", "400d",
             "Wall-clock time an hour bucket of counters is kept after its last change.",
             _positive_seconds, "counter_retention"),
    Variable("CX_CONTACT_VIEW_TTL", "30d",
             "Wall-clock time the latest enriched view of a contact stays available to "
             "`GET /api/v1/contacts/{id}`.", _positive_seconds, "contact_view_ttl"),
    Variable("CX_RETRY_MAX_BACKOFF", "5s",
             "Longest pause between retries while Redis or Kafka is unreachable (the worker "
             "retries without end and never skips the event).",
             _positive_seconds, "retry_max_backoff"),
    Variable("CX_SHUTDOWN_TIMEOUT", "30s",
             "On SIGTERM, how long the worker may take to stop: it finishes the batch in hand if "
             "it can, and whatever it is doing (a batch retrying an unreachable Redis or Kafka) "
             "it ends at this time, with exit code 124; what was not acknowledged is delivered "
             "again.",
             _positive_seconds, "shutdown_timeout"),
    Variable("CX_HTTP_HOST", "127.0.0.1",
             "Address the HTTP server (metrics, health, API) binds; `0.0.0.0` in containers.",
             _nonempty, "http_host"),
    Variable("CX_HTTP_PORT", "6066", "Port of the HTTP server.", _int_range(1, 65535),
             "http_port"),
    Variable("CX_POLICY_CACHE", "1s",
             "How long the API and the gauges keep the active policy version they read before "
             "reading it from Redis again: a `cx-stream rebuild` switch reaches them within "
             "this delay. 0 reads it at every request.", _cache_seconds, "policy_cache"),
    Variable("CX_API_MAX_READS", "32",
             "Most API requests reading Redis at once in one worker; more wait in line, first "
             "come first served. Keeps Redis connections (64 per worker) free for the "
             "pipeline's batches.", _int_range(1, 48), "api_max_reads"),
    Variable("CX_API_MAX_FCR", "2",
             "Most `/api/v1/fcr` requests reading Redis at once in one worker (each reads its "
             "range a week at a time, summed inside Redis, through the line of "
             "CX_API_MAX_READS); up to 4 times as "
             "many more wait, and further ones get 429.", _int_range(1, 16), "api_max_fcr"),
    Variable("CX_EVENT_LOOP", "uvloop",
             "The worker's event loop: `uvloop` (in C; asyncio's own loop when uvloop is not "
             "installed) or `asyncio`.", _event_loop, "event_loop"),
    # --- security: the HTTP API, Kafka and Redis clients (docs/security.md) ---
    Variable("CX_API_AUTH", "auto",
             "Who may call `/api/v1/*`: `token` (a bearer token from CX_API_TOKENS or "
             "CX_API_TOKENS_FILE), `none` (anyone who can reach the port), or `auto`: `token` "
             "when a token is configured; with none, open on a loopback CX_HTTP_HOST and a "
             "refusal to start on any other address.", _api_auth, "api_auth"),
    Variable("CX_API_TOKENS", "",
             "Bearer tokens accepted on the API, comma-separated (several during a rotation); "
             "at least 16 characters each, and never the placeholder of the example Kubernetes "
             "Secret.", _tokens, "api_tokens"),
    Variable("CX_API_TOKENS_FILE", "",
             "File of bearer tokens, one a line (`#` starts a comment); re-read when it changes, "
             "so tokens rotate without a restart. While it is missing or unreadable none of its "
             "tokens is accepted, and `/readyz` reports `api_tokens_file: false`.", str,
             "api_tokens_file"),
    Variable("CX_WALLBOARD_PUBLIC", "true",
             "Whether `/api/v1/wallboard` (aggregate figures only) is served without a token; "
             "when false it needs an API token, which the page takes as `/wallboard#token=...`.",
             _boolean, "wallboard_public"),
    Variable("CX_API_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]",
             "While `/api/v1/*` is served without a token (CX_API_AUTH), the host names a "
             "request's `Host` header may name (any port), comma-separated; others get 403, "
             "so that a web page cannot reach the API through DNS rebinding. `*` allows any. "
             "Not checked when a token is required.", _allowed_hosts, "api_allowed_hosts"),
    Variable("CX_METRICS_TOKEN", "",
             "When set, `/metrics` needs `Authorization: Bearer` with this token (at least 16 "
             "characters); empty leaves it open.", _optional_token, "metrics_token"),
    Variable("CX_HEALTH_TOKEN", "",
             "When set, `/healthz` and `/readyz` need `Authorization: Bearer` with this token "
             "(at least 16 characters); empty leaves them open.", _optional_token,
             "health_token"),
    Variable("CX_ERASURE_KEY", "",
             "Secret key (at least 16 characters) of the keyed hash (HMAC-SHA256) by which "
             "`cx-stream erase` remembers erased customers, so that the workers and `rebuild` "
             "drop their later events; the same on every worker and tool. Needed once a "
             "customer was erased ([security.md](security.md)).", _erasure_key, "erasure_key"),
    Variable("CX_ERASURE_KEY_FILE", "",
             "File whose first line is CX_ERASURE_KEY (instead of the variable).", str,
             "erasure_key_file"),
    Variable("CX_CORS_ORIGINS", "",
             "Origins (`https://wallboard.example.com`, comma-separated, or `*`) whose pages may "
             "call the API from a browser; empty allows none.", _origins, "cors_origins"),
    Variable("CX_HTTP_MAX_REQUEST_BYTES", "16384",
             "Largest request body the HTTP server accepts; larger ones get 413.",
             _int_range(0, 16 * 1024 * 1024), "http_max_request_bytes"),
    Variable("CX_API_RATE_LIMIT", "100",
             "Requests per second one client (one token, or one address without a token) may "
             "make to `/api/*` on average; more get 429 with Retry-After. 0 turns the limit off.",
             _bounded(float, "a number", 0.0, 1e6), "api_rate_limit"),
    Variable("CX_API_RATE_BURST", "200",
             "Requests one client may make at once, above the average rate.",
             _int_range(1, 1_000_000), "api_rate_burst"),
    Variable("CX_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT",
             "How every Kafka client of the service connects: `PLAINTEXT`, `SSL`, "
             "`SASL_PLAINTEXT` or `SASL_SSL`.", _kafka_protocol, "kafka_security_protocol"),
    Variable("CX_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512",
             "SASL mechanism with `SASL_*` protocols: `PLAIN`, `SCRAM-SHA-256` or "
             "`SCRAM-SHA-512`.", _sasl_mechanism, "kafka_sasl_mechanism"),
    Variable("CX_KAFKA_SASL_USERNAME", "", "SASL user name.", str, "kafka_sasl_username"),
    Variable("CX_KAFKA_SASL_PASSWORD", "",
             "SASL password (prefer CX_KAFKA_SASL_PASSWORD_FILE).", _secret,
             "kafka_sasl_password"),
    Variable("CX_KAFKA_SASL_PASSWORD_FILE", "",
             "File holding the SASL password (its first line).", str,
             "kafka_sasl_password_file"),
    Variable("CX_KAFKA_SSL_CAFILE", "",
             "PEM file of the CA certificates that signed the brokers' certificates; empty "
             "means the system's trusted CAs.", str, "kafka_ssl_cafile"),
    Variable("CX_KAFKA_SSL_CERTFILE", "",
             "PEM client certificate, for brokers that require one (mutual TLS).", str,
             "kafka_ssl_certfile"),
    Variable("CX_KAFKA_SSL_KEYFILE", "", "PEM private key of CX_KAFKA_SSL_CERTFILE.", str,
             "kafka_ssl_keyfile"),
    Variable("CX_KAFKA_SSL_CHECK_HOSTNAME", "true",
             "Whether a broker's certificate must name the host it is reached at.", _boolean,
             "kafka_ssl_check_hostname"),
    Variable("CX_REDIS_USERNAME", "",
             "Redis ACL user (instead of the one in CX_REDIS_URL).", str, "redis_username"),
    Variable("CX_REDIS_PASSWORD", "",
             "Redis password (instead of the one in CX_REDIS_URL; prefer "
             "CX_REDIS_PASSWORD_FILE).", _secret, "redis_password"),
    Variable("CX_REDIS_PASSWORD_FILE", "", "File holding the Redis password (its first line).",
             str, "redis_password_file"),
    Variable("CX_REDIS_TLS_CA_FILE", "",
             "PEM file of the CA certificates that signed Redis's certificate (with a "
             "`rediss://` URL), trusted besides the system's CAs.", str, "redis_tls_ca_file"),
    Variable("CX_REDIS_TLS_CERT_FILE", "",
             "PEM client certificate, for a Redis with `tls-auth-clients yes`.", str,
             "redis_tls_cert_file"),
    Variable("CX_REDIS_TLS_KEY_FILE", "", "PEM private key of CX_REDIS_TLS_CERT_FILE.", str,
             "redis_tls_key_file"),
    Variable("CX_REDIS_TLS_CHECK_HOSTNAME", "true",
             "Whether Redis's certificate must name the host it is reached at.", _boolean,
             "redis_tls_check_hostname"),
    Variable("CX_METRICS_WINDOWS", "1h,24h,7d",
             "Trailing event-time windows of the business gauges (label `window`).",
             _windows, "metrics_windows"),
    Variable("CX_METRICS_AGENT_LABELS", "0",
             "Largest number of agents given their own `agent` series in the business "
             "gauges (the busiest ones; the others are summed in `agent=\"other\"`); 0 exports "
             "no per-agent series.",
             _int_range(0, 2000), "metrics_agent_labels"),
    Variable("CX_MAX_QUEUES", "500",
             "Most queue names with counters, series and wallboard tiles of their own: the "
             "busiest ones (and the first ones seen while there is room); contacts of any "
             "other queue are counted under the queue `other`.", _int_range(1, 100_000),
             "max_queues"),
    Variable("CX_MAX_SEGMENTS", "100",
             "Most segment names with counters and series of their own, as CX_MAX_QUEUES; the "
             "rest are counted under the segment `other`.", _int_range(1, 100_000),
             "max_segments"),
    Variable("CX_MAX_AGENTS", "5000",
             "Most agent ids with counters of their own, as CX_MAX_QUEUES; the rest are "
             "counted under the agent `other`. CX_METRICS_AGENT_LABELS picks the agents among "
             "them that get gauge series.", _int_range(1, 1_000_000), "max_agents"),
    Variable("CX_FCR_TARGET", "0.7",
             "FCR the centre aims for (0-1): the wallboard colours tiles against it, and the "
             "avoidable cost is computed at it.",
             _ratio, "fcr_target"),
    Variable("CX_METRICS_REFRESH", "15s",
             "How often the worker recomputes the business gauges from Redis.",
             _positive_seconds, "metrics_refresh"),
    Variable("CX_DATA_DIR", "",
             "Folder for the worker's local files; empty means a fresh temporary folder.",
             str, "data_dir"),
    Variable("CX_LOG_LEVEL", "info", "Log level: debug, info, warning or error.",
             _log_level, "log_level"),
    # Repeat drivers and the cost of contacts
    Variable("CX_MAX_REASONS", "50",
             "Most contact reasons (call-ended `reason`) with counters of their own, as "
             "CX_MAX_QUEUES; the rest are counted under the reason `other`, contacts without a "
             "reason under `unknown`.", _int_range(1, 100_000), "max_reasons"),
    Variable("CX_MAX_TOPICS", "20",
             "Most speech and text analytics topics (call-ended `topics`) with counters and "
             "series of their own, as CX_MAX_QUEUES; the rest are counted under the topic "
             "`other`.", _int_range(1, 10_000), "max_topics"),
    Variable("CX_CONTACT_COSTS", "",
             "Cost of one handled contact per channel and optionally per queue (a queue's "
             "price overrides its channel's), JSON with an ISO 4217 currency, at most 3 "
             "decimals, e.g. `{\"currency\": \"USD\", \"channel\": {\"voice\": 6.5}, "
             "\"queue\": {\"billing\": 7.9}}`; empty: no cost figures.",
             parse_costs, "contact_costs"),
    Variable("CX_AGENT_MIN_CONTACTS", "30",
             "Handled contacts an agent needs in a range of /api/v1/agents to be ranked or "
             "flagged; agents with fewer are listed as not enough contacts.",
             _int_range(1, 1_000_000), "agent_min_contacts"),
    # customer value (docs/metrics-definitions.md, Customer value)
    Variable("CX_SEGMENT_VALUES", "{}",
             "JSON object: a customer's value per month by segment (e.g. "
             "`{\"gold\": 900, \"standard\": 60, \"*\": 30}`, `*` for any other segment), "
             "for customers none of whose contacts carried `customer_value`; else 0. Sums the "
             "value at risk.", _segment_values, "segment_values"),
    # early warning from speech and text analytics (docs/perception.md)
    Variable("CX_AT_RISK_ON_COMPLAINT", "true",
             "Whether a contact whose speech or text analytics heard a complaint "
             "(`complaint: true`) puts its customer at risk by itself, whatever the score.",
             _boolean, "at_risk_on_complaint"),
    # `cx-stream map`: platform records to the event contract (docs/sources.md)
    Variable("CX_MAP_MAPPING", "",
             "`cx-stream map`: the mapping file (YAML or JSON), or the name of a shipped one: "
             "`amazon_connect`, `genesys_cloud` (`--mapping` overrides it).", str,
             "map_mapping"),
    Variable("CX_MAP_TOPIC", "",
             "`cx-stream map`: the topic of the platform's raw records (`--topic` overrides "
             "it).", _optional_topic, "map_topic"),
    Variable("CX_MAP_GROUP_ID", "",
             "`cx-stream map`: its Kafka consumer group; empty means CX_GROUP_ID followed by "
             "`-map-` and the mapping's source name.", str, "map_group_id"),
    Variable("CX_MAP_PARAMS", "{}",
             "`cx-stream map`: values for the mapping file's `params`, JSON, e.g. "
             "`{\"customer_attribute\": \"crm_id\"}`.", _map_params, "map_params"),
    Variable("CX_MAP_HASH_SALT", "",
             "`cx-stream map`: secret (at least 16 characters) of the keyed hash (HMAC-SHA256) "
             "of values a mapping hashes (a caller's number as customer id); needed by a "
             "mapping that hashes, and the same for every run, or the ids change.", _secret,
             "map_hash_salt"),
    Variable("CX_MAP_HASH_SALT_FILE", "",
             "File whose first line is CX_MAP_HASH_SALT (instead of the variable).", str,
             "map_hash_salt_file"),
    Variable("CX_MAP_MAX_RECORD_BYTES", "262144",
             "`cx-stream map`: largest raw record in bytes; larger ones are dead-lettered as "
             "`too_large`.", _int_range(64, 16 * 1024 * 1024), "map_max_record_bytes"),
    Variable("CX_MAP_HTTP_PORT", "6067",
             "`cx-stream map`: port of its Prometheus `/metrics` (on CX_HTTP_HOST); 0 serves "
             "none.", _int_range(0, 65535), "map_http_port"),
)


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str
    redis_url: str
    group_id: str
    key_prefix: str
    topic_call_ended: str
    topic_transfer: str
    topic_survey_answered: str
    topic_dead_letter: str
    topic_contact_enriched: str
    topic_customer_alerts: str
    topic_partitions: int
    topic_replication: int
    max_event_bytes: int
    dead_letter_max_copy: int
    max_event_depth: int
    max_clock_skew: float
    max_contacts_per_customer: int
    batch_max_events: int
    rebuild_batch_max_events: int
    batch_max_wait: float
    state_cache_mb: int
    kafka_session_timeout: float
    commit_interval: float
    repeat_window: float
    allowed_lateness: float | None
    transfer_breaks_fcr: bool
    repeat_same_reason: bool
    repeat_same_channel: bool
    queue_policies: dict[str, dict[str, Any]]
    policy_version: str
    perception_baseline: float
    perception_segment_baselines: dict[str, float]
    perception_half_life: float
    perception_wait_target: float
    at_risk_below: float
    at_risk_recover_at: float
    at_risk_drop: float
    at_risk_drop_period: float
    state_idle_ttl: float
    counter_retention: float
    contact_view_ttl: float
    retry_max_backoff: float
    shutdown_timeout: float
    # security (docs/security.md); secrets are left out of the repr
    api_auth: str
    api_tokens: tuple[str, ...] = field(repr=False)
    api_tokens_file: str
    api_allowed_hosts: tuple[str, ...]
    wallboard_public: bool
    metrics_token: str = field(repr=False)
    health_token: str = field(repr=False)
    erasure_key: str = field(repr=False)
    erasure_key_file: str
    cors_origins: tuple[str, ...]
    http_max_request_bytes: int
    api_rate_limit: float
    api_rate_burst: int
    kafka_security_protocol: str
    kafka_sasl_mechanism: str
    kafka_sasl_username: str
    kafka_sasl_password: str = field(repr=False)
    kafka_sasl_password_file: str
    kafka_ssl_cafile: str
    kafka_ssl_certfile: str
    kafka_ssl_keyfile: str
    kafka_ssl_check_hostname: bool
    redis_username: str
    redis_password: str = field(repr=False)
    redis_password_file: str
    redis_tls_ca_file: str
    redis_tls_cert_file: str
    redis_tls_key_file: str
    redis_tls_check_hostname: bool
    metrics_windows: tuple[tuple[str, float], ...]
    metrics_agent_labels: int
    max_queues: int
    max_segments: int
    max_agents: int
    metrics_refresh: float
    fcr_target: float
    http_host: str
    http_port: int
    policy_cache: float
    api_max_reads: int
    api_max_fcr: int
    event_loop: str
    data_dir: str
    log_level: str
    segment_values: dict[str, float]
    at_risk_on_complaint: bool
    max_reasons: int = 50
    max_topics: int = 20
    contact_costs: ContactCosts | None = None
    agent_min_contacts: int = 30
    map_mapping: str = ""
    map_topic: str = ""
    map_group_id: str = ""
    map_params: dict[str, str] = field(default_factory=dict)
    map_hash_salt: str = field(default="", repr=False)
    map_hash_salt_file: str = ""
    map_max_record_bytes: int = 262144
    map_http_port: int = 6067

    @property
    def input_topics(self) -> tuple[str, str, str]:
        return (self.topic_call_ended, self.topic_transfer, self.topic_survey_answered)

    @property
    def output_topics(self) -> tuple[str, str, str]:
        return (self.topic_dead_letter, self.topic_contact_enriched, self.topic_customer_alerts)

    @property
    def state_prefix(self) -> str:
        """Prefix of the Redis keys of this policy version's state (version 1: the key
        prefix itself, so state written before versions existed stays readable)."""
        return state_prefix(self.key_prefix, self.policy_version)

    @property
    def worker_group_id(self) -> str:
        """Consumer group of the workers of this policy version (version 1: CX_GROUP_ID)."""
        return worker_group(self.group_id, self.policy_version)

    @property
    def topic_kinds(self) -> dict[str, str]:
        """Input topic -> the kind of event it carries (call-ended, transfer, survey-answered)."""
        return {
            self.topic_call_ended: "call-ended",
            self.topic_transfer: "transfer",
            self.topic_survey_answered: "survey-answered",
        }


def state_prefix(key_prefix: str, version: str) -> str:
    """`P` for policy version 1, `P:vN` after: keys stay `<prefix>:{pN}:...` (cluster tags)."""
    return key_prefix if version == "1" else f"{key_prefix}:v{version}"


def worker_group(group_id: str, version: str) -> str:
    """`G` for policy version 1, `G-vN` after."""
    return group_id if version == "1" else f"{group_id}-v{version}"


def policy_of(settings: Settings) -> Policy:
    """The operator's rules, from the settings."""
    default = QueuePolicy(
        repeat_window=settings.repeat_window,
        transfer_breaks_fcr=settings.transfer_breaks_fcr,
        repeat_same_reason=settings.repeat_same_reason,
        repeat_same_channel=settings.repeat_same_channel,
    )
    return Policy(
        default=default,
        per_queue={q: replace(default, **rules) for q, rules in settings.queue_policies.items()},
        allowed_lateness=settings.allowed_lateness or settings.repeat_window,
        perception=PerceptionPolicy(
            baseline=settings.perception_baseline,
            segment_baselines=settings.perception_segment_baselines,
            half_life=settings.perception_half_life,
            wait_target=settings.perception_wait_target,
            at_risk_below=settings.at_risk_below,
            at_risk_recover_at=settings.at_risk_recover_at,
            at_risk_drop=settings.at_risk_drop,
            at_risk_drop_period=settings.at_risk_drop_period,
            segment_values=settings.segment_values,
            at_risk_on_complaint=settings.at_risk_on_complaint,
        ),
        version=settings.policy_version,
    )


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every `CX_` variable; raise ConfigError naming the first bad one."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for var in VARIABLES:
        raw = env.get(var.name, var.default)
        try:
            values[var.field] = var.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{var.name}: {exc}") from None
    settings = Settings(**values)
    _check_security(settings)
    if settings.at_risk_recover_at < settings.at_risk_below:
        raise ConfigError("CX_AT_RISK_RECOVER_AT: must not be below CX_AT_RISK_BELOW")
    if len(set(settings.input_topics + settings.output_topics)) != 6:
        raise ConfigError(
            "CX_TOPIC_*: the three input and three output topics must have six distinct names"
        )
    return settings
