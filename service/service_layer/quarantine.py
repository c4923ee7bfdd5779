"""Finding the events that make a batch fail, so that exactly those are dead-lettered.

A batch whose application raises something retrying cannot cure is tried again in parts:
customers in halves (bisection), then the events of each failing customer. A `trial` applies
some of the batch's events (by index, in batch order) without writing anything and returns the
exception it raised, or None. Work done only when a batch failed: a few trials per culprit
(about log2 of the batch's customers), not one per event."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from service.domain.engine import state_key
from service.domain.events import ContactEvent
from service.domain.partition import UndecodableState
from service.service_layer.dead_letters import InputMessage

log = logging.getLogger(__name__)
Items = Sequence[tuple[InputMessage, ContactEvent]]
Trial = Callable[[list[int]], Awaitable[BaseException | None]]


async def culprits(items: Items, trial: Trial, topic_kinds: Mapping[str, str]
                   ) -> dict[tuple[str, int], str]:
    """The events of one partition that make it fail: (topic, offset) -> why. Empty when it
    fails even without any of its events (the failure is not tied to them)."""
    if await trial([]) is not None:
        return {}
    groups: dict[str, list[int]] = {}
    for index, (_, event) in enumerate(items):
        groups.setdefault(state_key(event), []).append(index)
    kept: list[int] = []
    found: dict[int, BaseException] = {}
    for group, exc in await bisect(kept, list(groups.values()), trial):
        key = state_key(items[group[0]][1])
        if len(group) == 1 or (isinstance(exc, UndecodableState) and exc.key == key):
            found.update(dict.fromkeys(group, exc))  # every event of that customer
            continue
        for (index,), event_exc in await bisect(kept, [[i] for i in group], trial):
            found[index] = event_exc
    out: dict[tuple[str, int], str] = {}
    for index, exc in sorted(found.items()):
        msg = items[index][0]
        log.error("%s[%d]@%d cannot be applied", msg.topic, msg.partition, msg.offset,
                  exc_info=exc)
        out[(msg.topic, msg.offset)] = (
            f"{topic_kinds.get(msg.topic, msg.topic)}: {type(exc).__name__}: {exc}")
    return out


async def bisect(kept: list[int], units: list[list[int]], trial: Trial
                 ) -> list[tuple[list[int], BaseException]]:
    """The units (lists of indexes) that fail when tried on top of `kept`: a chunk that passes
    joins `kept` (extended in place), a failing one is split in two. `kept` passes at every
    step, so what it holds at the end passes together."""
    bad: list[tuple[list[int], BaseException]] = []

    async def visit(chunk: list[list[int]]) -> None:
        flat = [i for unit in chunk for i in unit]
        exc = await trial(sorted(kept + flat))
        if exc is None:
            kept.extend(flat)
        elif len(chunk) == 1:
            bad.append((chunk[0], exc))
        else:
            half = len(chunk) // 2
            await visit(chunk[:half])
            await visit(chunk[half:])

    if units:
        await visit(units)
    return bad
