"""A worker process stopped with Ctrl+C mid-rollout: the release's runner with the shim, and a spare claim.

Usage: python interrupted_worker.py ENDPOINT STARTED_FILE

A second client first claims a task it never works on (its claim is still open when the
process exits). Then the runner claims the next task; the agent creates STARTED_FILE once
its rollout is under way and waits (up to a minute) for the SIGINT the test sends. The
runner, the shim and the interpreter's exit do the rest.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from agentlightning import LitAgent

from lightning_attempts import AttemptAwareClient
from lightning_attempts.compat import LegacyRunner
from lightning_attempts.testing import NullTracer


class WaitingAgent(LitAgent):  # pyright: ignore[reportMissingTypeArgument]
    def __init__(self, started: Path) -> None:
        super().__init__()
        self.started = started

    def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
        self.started.touch()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.05)
        return 1.0


def main() -> None:
    endpoint, started = sys.argv[1], Path(sys.argv[2])
    spare = AttemptAwareClient(endpoint, poll_interval=0.05)
    assert spare.poll_next_task() is not None
    client = AttemptAwareClient(endpoint, poll_interval=0.05)
    tracer: Any = NullTracer()
    exporter: Any = None
    runner = LegacyRunner(
        agent=WaitingAgent(started), client=client, tracer=tracer, triplet_exporter=exporter, worker_id=0
    )
    runner.run()


if __name__ == "__main__":
    main()
