"""Fixtures shared by the integration and end-to-end tests.

`stack` starts a real Kafka broker and a real Redis on free ports of their own, in a folder of
their own (so a `make run` in progress is not disturbed), once per test session, and stops
them at the end. Unit tests never ask for it and need no server.

CX_TEST_REDIS_MODE=cluster makes that Redis a 3-master Redis Cluster (`make integration-cluster`),
CX_TEST_REDIS_MODE=sentinel a primary, a replica and a sentinel: the same tests then run against
it, through the `redis+cluster://` or `redis+sentinel://` URL the stack hands out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import Stack, free_port, free_port_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    script = str(ROOT / "deploy/local/stack.sh")
    mode = os.environ.get("CX_TEST_REDIS_MODE", "single")
    if mode not in ("single", "cluster", "sentinel"):
        pytest.fail(f"CX_TEST_REDIS_MODE: expected single, cluster or sentinel, got {mode!r}")
    failures = []
    for _ in range(3):  # a free port can be taken by someone else before the broker binds it
        state = Path(tempfile.mkdtemp(prefix="stack-", dir=_test_dir()))
        env = {k: v for k, v in os.environ.items()
               if k not in ("CX_KAFKA_BOOTSTRAP", "CX_REDIS_URL")}
        kafka_port, controller_port = free_port(), free_port()
        # A cluster's three nodes take consecutive ports, and each its port + 10000 for the bus;
        # a sentinel setup takes three consecutive ports (primary, replica, sentinel).
        redis_port = (free_port() if mode == "single" else
                      free_port_run(3, bus_offset=10000 if mode == "cluster" else 0))
        env.update(
            CX_STACK_DIR=str(state),
            CX_KAFKA_PORT=str(kafka_port),
            CX_KAFKA_CONTROLLER_PORT=str(controller_port),
            CX_REDIS_PORT=str(redis_port),
            CX_LOCAL_REDIS=mode,
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
        printed = subprocess.run([script, "env"], env=env, capture_output=True, text=True,
                                 check=True).stdout
        redis_url = dict(line.split("=", 1) for line in printed.split())["CX_REDIS_URL"]
        yield Stack(
            kafka_bootstrap=f"127.0.0.1:{kafka_port}",
            redis_url=redis_url,
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
