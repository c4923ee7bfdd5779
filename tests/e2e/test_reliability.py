"""Short forms of the fault scenarios (docs/reliability.md): `make chaos` runs them full size.

Each drives a seeded mixed stream through real workers, Kafka and Redis while injecting its
faults, then compares every verdict, counter, dead letter, watermark and perception score with
the independent oracle of tests/chaos: nothing lost, nothing applied twice, nothing wrong.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import scenarios
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e


def test_worker_killed_with_sigkill_three_times_loses_and_doubles_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    scenarios.kill_9(stack, tmp_path, events=20_000, kills=3, days=12)


def test_redis_killed_losing_its_last_second_of_writes_loses_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    scenarios.redis_loss(stack, tmp_path, events=15_000, crashes=1, days=12)


def test_a_flood_of_invalid_and_oversized_events_is_dead_lettered_and_counted(
    stack: Stack, tmp_path: Path
) -> None:
    scenarios.poison_flood(stack, tmp_path, events=8_000, flood=10_000, oversized=10,
                           days=10)
