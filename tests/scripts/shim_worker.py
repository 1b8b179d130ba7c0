"""A shim worker that a test stops mid-rollout (SIGKILL or Ctrl+C): the release's runner on AttemptAwareClient.

Usage: python shim_worker.py ENDPOINT STARTED_FILE [--spare-claim]

The runner claims a task (leased: the shim says that it heartbeats); the agent writes the
rollout id to STARTED_FILE once its rollout is under way, then works for up to a minute,
which the test cuts short. With ``--spare-claim``, a second client first claims a task it
never works on, so its claim is still open when the process ends.
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


class WorkingAgent(LitAgent):  # pyright: ignore[reportMissingTypeArgument]
    def __init__(self, started: Path) -> None:
        super().__init__()
        self.started = started

    def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
        self.started.write_text(rollout_id)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.05)
        return 1.0


def main() -> None:
    endpoint, started = sys.argv[1], Path(sys.argv[2])
    if "--spare-claim" in sys.argv[3:]:
        spare = AttemptAwareClient(endpoint, poll_interval=0.05)
        assert spare.poll_next_task() is not None
    client = AttemptAwareClient(endpoint, poll_interval=0.05)
    tracer: Any = NullTracer()
    exporter: Any = None
    runner = LegacyRunner(
        agent=WorkingAgent(started), client=client, tracer=tracer, triplet_exporter=exporter, worker_id=0
    )
    runner.run()


if __name__ == "__main__":
    main()
