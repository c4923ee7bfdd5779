"""Every name the engine's data is stored under, in one place: state keys, counter fields, the
partition clock's fields, and the Redis key layout built from them.

The engine names a customer's state, the store writes it under a Redis key, the state cache
recognises it and the API reads it back: they all build the names here. The Lua scripts under
service/adapters/lua/ receive keys ready-made, but read and write three clock fields by name
(`seq`, `w`, `e`): those are fixed by the scripts and must stay as they are here.
"""

from __future__ import annotations

# -- state keys (within a partition) --------------------------------------------------------
CUSTOMER = "c:"  # `c:<customer_id>`: an identified customer's state
UNIDENTIFIED = "u:"  # `u:<contact_id>`: the state of an unidentified caller's one contact


def customer_state(customer_id: str) -> str:
    return CUSTOMER + customer_id


def unidentified_state(contact_id: str) -> str:
    return UNIDENTIFIED + contact_id


# -- hour counters: hash fields `<dimension>|<name>` ----------------------------------------


def counter_field(dimension: str, name: str) -> str:
    """`dimension` is `all` or `<kind>:<value>` (queue:billing); `name` a counter (FIELDS)."""
    return f"{dimension}|{name}"


def split_counter_field(field: str) -> tuple[str, str]:
    """(dimension, name) of a counter field; a dimension's value may itself hold `|`."""
    dimension, _, name = field.rpartition("|")
    return dimension, name


# Every counter of one agent's contacts in one queue (the agents table of a queue). Not to be
# confused with the repeat drivers' `queue_agent:<q>><a>`, which holds a few fields only.
QUEUE_AGENT = "agent_in_queue"


def queue_agent_dimension(queue: str, agent: str) -> str:
    """`agent_in_queue:<len(queue)>:<queue><agent>`: one agent's contacts in one queue (both
    names may hold any character, so the queue's length says where the agent starts)."""
    return f"{QUEUE_AGENT}:{len(queue)}:{queue}{agent}"


def split_queue_agent(value: str) -> tuple[str, str] | None:
    """(queue, agent) of an `agent_in_queue` dimension's value (after `agent_in_queue:`)."""
    size, sep, rest = value.partition(":")
    if not sep or not size.isdigit() or int(size) > len(rest):
        return None
    n = int(size)
    return rest[:n], rest[n:]


# -- the partition clock's hash fields ------------------------------------------------------
CLOCK_SEQ = "seq"  # write guard: bumped by every commit (commit_partition.lua)
CLOCK_WRITER = "w"  # token of the worker that wrote `seq` ('' when it holds no states)
CLOCK_WATERMARK = "wm"
CLOCK_NEWEST = "m:"  # + topic: the newest event time applied
CLOCK_OFFSET = "o:"  # + topic: the last offset applied
CLOCK_APPLIED = "n:"  # + topic: events applied
CLOCK_AT_RISK = "at_risk"  # customers currently at risk
CLOCK_NOISY = "noisy"  # customers over CX_MAX_CONTACTS_PER_CUSTOMER
CLOCK_ERASURES = "e"  # the erasure generation swept into the partition (erase_partition.lua)
CLOCK_BAND = "band:"  # + band: customers per perception band
CLOCK_JOINS = ("surveys_joined", "surveys", "transfers_joined", "transfers")
# Customer value (domain/value.py), per segment label; erase_partition.lua writes them too.
CLOCK_VALUE_AT_RISK = "var:"  # + segment: summed value of customers at risk, in cents
CLOCK_AT_RISK_SEGMENT = "ars:"  # + segment: customers at risk

# -- Redis keys (`P` the key prefix, `{pN}` the partition's Cluster hash tag) ---------------
CLOCK = "clock"  # P:{pN}:clock hash
TIMERS = "timers"  # P:{pN}:timers sorted set: state keys by when they next need attention
OUTBOX = "outbox"  # P:{pN}:outbox list: outputs committed, not yet published
STATE = "s:"  # P:{pN}:s:<state key>
HOUR = "h:"  # P:{pN}:h:<epoch second of the hour> hash of counter fields
# The at-risk work list (domain/value.py): P:{pN}:risk hash customer_id -> entry JSON, and one
# sorted set of its customer_ids per order (value: minus the cents; score; since).
RISK = "risk"
RISK_ORDERS = {"value": "risk:v", "score": "risk:s", "since": "risk:t"}
# The latest contacts (a queue's contacts of the last hour): P:{pN}:recent sorted set of
# `[queue, contact_id]` JSON by occurred_at, the last RECENT_SECONDS of event time before the
# watermark, at most RECENT_PER_PARTITION of them.
RECENT = "recent"
RECENT_SECONDS = 3600
RECENT_PER_PARTITION = 5000


def partition_key(prefix: str, partition: int, name: str) -> str:
    return f"{prefix}:{{p{partition}}}:{name}"


def state_redis_key(prefix: str, partition: int, state: str) -> str:
    return partition_key(prefix, partition, STATE + state)


def hour_redis_key(prefix: str, partition: int, hour: int) -> str:
    return partition_key(prefix, partition, f"{HOUR}{hour}")


def contact_view_key(prefix: str, contact_id: str) -> str:
    """P:contact:<contact_id> hash: the latest enriched view of a contact (`v`, `j`)."""
    return f"{prefix}:contact:{contact_id}"
