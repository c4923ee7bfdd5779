"""A small progress bar on standard error (no extra dependency)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int | None, label: str, *, enabled: bool = True,
                 stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self._enabled = enabled and stream.isatty()
        self._stream = stream
        self._started = time.monotonic()
        self._shown = 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self._enabled and now - self._shown >= 0.2:
            self._shown = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self._started, 1e-9)
        if self.total:
            share = min(self.done / self.total, 1.0)
            bar = "#" * int(share * 30)
            line = (f"\r{self.label} [{bar:<30}] {self.done:,}/{self.total:,} "
                    f"{share:4.0%} {rate:,.0f}/s")
        else:
            line = f"\r{self.label} {self.done:,} {rate:,.0f}/s"
        self._stream.write(line)
        self._stream.flush()

    def finish(self) -> float:
        """End the bar; return the elapsed seconds."""
        elapsed = time.monotonic() - self._started
        if self._enabled:
            self._draw(time.monotonic())
            self._stream.write("\n")
        return elapsed
