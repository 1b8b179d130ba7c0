"""A shim worker that will be killed with SIGKILL mid-rollout: the release's runner on AttemptAwareClient.

Usage: python killed_worker.py ENDPOINT STARTED_FILE

The runner claims a task (leased: the shim says that it heartbeats) and the agent creates
STARTED_FILE once its rollout is under way, then works for a minute; the test kills the
process before that, so no release, no result and no heartbeat ever come from it again.
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
        time.sleep(60)
        return 1.0


def main() -> None:
    endpoint, started = sys.argv[1], Path(sys.argv[2])
    client = AttemptAwareClient(endpoint, poll_interval=0.05)
    tracer: Any = NullTracer()
    exporter: Any = None
    runner = LegacyRunner(
        agent=WorkingAgent(started), client=client, tracer=tracer, triplet_exporter=exporter, worker_id=0
    )
    runner.run()


if __name__ == "__main__":
    main()
