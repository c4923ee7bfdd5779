"""The worker's event loop: uvloop when installed and chosen (CX_EVENT_LOOP), else asyncio's.

uvloop runs the loop, sockets and timers in C: the same HTTP lookups, Kafka and Redis I/O
cost the worker's one core less (docs/benchmarks.md). Faust's consumer thread gets a loop of
the same kind, through the policy.
"""

from __future__ import annotations

import asyncio
import importlib.util


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def use_event_loop(kind: str = "uvloop") -> str:
    """Install the event loop policy of `kind` for this process; return the kind in use
    (asyncio when uvloop is asked for but not installed)."""
    if kind == "uvloop" and uvloop_installed():
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return "uvloop"
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    return "asyncio"


def new_event_loop(kind: str = "uvloop") -> asyncio.AbstractEventLoop:
    """A new loop of `kind` (asyncio's when uvloop is not installed), policy installed."""
    use_event_loop(kind)
    return asyncio.new_event_loop()
