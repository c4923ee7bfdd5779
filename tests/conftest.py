"""Fixtures shared by the integration and end-to-end tests.

`stack` starts a real Kafka broker and a real Redis on free ports of their own, in a folder of
their own (so a `make run` in progress is not disturbed), once per test session, and stops
them at the end. Unit tests never ask for it and need no server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import Stack, free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    script = str(ROOT / "deploy/local/stack.sh")
    failures = []
    for _ in range(3):  # a free port can be taken by someone else before the broker binds it
        state = Path(tempfile.mkdtemp(prefix="stack-", dir=_test_dir()))
        env = {k: v for k, v in os.environ.items()
               if k not in ("CX_KAFKA_BOOTSTRAP", "CX_REDIS_URL")}
        kafka_port, controller_port, redis_port = free_port(), free_port(), free_port()
        env.update(
            CX_STACK_DIR=str(state),
            CX_KAFKA_PORT=str(kafka_port),
            CX_KAFKA_CONTROLLER_PORT=str(controller_port),
            CX_REDIS_PORT=str(redis_port),
        )
        started = subprocess.run([script, "start"], env=env, capture_output=True, text=True)
        if started.returncode == 0:
            break
        failures.append(started.stderr + _tail(state / "kafka/kafka.log"))
        subprocess.run([script, "stop"], env=env, capture_output=True)
        shutil.rmtree(state, ignore_errors=True)
    else:
        pytest.fail("could not start the test stack:\n" + "\n---\n".join(failures))
    try:
        yield Stack(
            kafka_bootstrap=f"127.0.0.1:{kafka_port}",
            redis_url=f"redis://127.0.0.1:{redis_port}/0",
            redis_port=redis_port,
            script=script,
            env=env,
            state_dir=state,
        )
    finally:
        subprocess.run([script, "stop"], env=env, capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except OSError:
        return ""


def _test_dir() -> Path:
    path = ROOT / ".cx-test"
    path.mkdir(exist_ok=True)
    return path
