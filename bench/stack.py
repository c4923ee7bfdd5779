"""The benchmark's own Kafka and Redis: deploy/local/stack.sh on free ports, in .cx-bench/."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.stack import Stack, free_port

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def local_stack(kafka_heap: str = "1g") -> Iterator[Stack]:
    script = str(ROOT / "deploy/local/stack.sh")
    base = ROOT / ".cx-bench"
    base.mkdir(exist_ok=True)
    failures: list[str] = []
    for _ in range(3):  # a free port can be taken before the broker binds it
        state = Path(tempfile.mkdtemp(prefix="stack-", dir=base))
        env = {k: v for k, v in os.environ.items()
               if k not in ("CX_KAFKA_BOOTSTRAP", "CX_REDIS_URL")}
        kafka_port, controller_port, redis_port = free_port(), free_port(), free_port()
        env.update(CX_STACK_DIR=str(state), CX_KAFKA_PORT=str(kafka_port),
                   CX_KAFKA_CONTROLLER_PORT=str(controller_port),
                   CX_REDIS_PORT=str(redis_port), CX_KAFKA_HEAP=kafka_heap)
        started = subprocess.run([script, "start"], env=env, capture_output=True, text=True)
        if started.returncode == 0:
            break
        failures.append(started.stderr)
        subprocess.run([script, "stop"], env=env, capture_output=True)
        shutil.rmtree(state, ignore_errors=True)
    else:
        raise SystemExit("could not start the benchmark stack:\n" + "\n---\n".join(failures))
    try:
        yield Stack(kafka_bootstrap=f"127.0.0.1:{kafka_port}",
                    redis_url=f"redis://127.0.0.1:{redis_port}/0", redis_port=redis_port,
                    script=script, env=env, state_dir=state)
    finally:
        subprocess.run([script, "stop"], env=env, capture_output=True)
        shutil.rmtree(state, ignore_errors=True)
