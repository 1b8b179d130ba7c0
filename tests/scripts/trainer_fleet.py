"""Run the installed release's upstream Trainer (forked workers, default AgentOps tracer) against a server.

Usage: python trainer_fleet.py ENDPOINT N_WORKERS MAX_TASKS CLIENT   (CLIENT: shim | upstream | url)

``FLEET_START_METHOD`` (spawn, forkserver) sets multiprocessing's start method first: the trainer
then pickles itself, its client with it, into each worker (macOS's default; Linux's from 3.14).

``url`` hands the trainer the endpoint itself, so that it builds agentlightning's client (what
``LIGHTNING_ATTEMPTS_INSTALL=1`` turns into ``AttemptAwareClient``); this script then never
imports lightning_attempts.

The shim sends ``AGL_KEY`` when it is set; upstream's client cannot send a key.

The agent straggles on the first claim of a ``{"slow": true}`` task: it asks the server how
many claims the task has had (``GET /attempts/{rollout_id}``) and, on the first, outlasts the
task timeout and rewards 0.0; later claims reward 1.0 at once.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx
from agentlightning import LitAgent, Trainer

STRAGGLE_SECONDS = 2.5


class StragglingAgent(LitAgent):  # pyright: ignore[reportMissingTypeArgument]
    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.endpoint = endpoint

    def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
        if not task.get("slow"):
            return 1.0
        key = os.environ.get("AGL_KEY")  # a keyed server answers every route 401 without it
        claims = httpx.get(f"{self.endpoint}/attempts/{rollout_id}", headers={"x-api-key": key} if key else {}).json()
        if len(claims) == 1:
            time.sleep(STRAGGLE_SECONDS)  # the slow rollout itself, in a worker process
            return 0.0
        return 1.0


def main() -> None:
    endpoint, n_workers, max_tasks, kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if start_method := os.environ.get("FLEET_START_METHOD"):
        multiprocessing.set_start_method(start_method)
    backend: Any = endpoint
    if kind != "url":
        from lightning_attempts import AttemptAwareClient
        from lightning_attempts.compat import AgentLightningClient

        client_class = AttemptAwareClient if kind == "shim" else AgentLightningClient
        backend = client_class(endpoint, poll_interval=0.05)
    trainer = Trainer(n_workers=n_workers, max_tasks=max_tasks)
    fit: Any = getattr(trainer, "fit_v0", None) or trainer.fit  # 0.2+ keeps the legacy loop as fit_v0
    fit(StragglingAgent(endpoint), backend)
    print("trainer finished", flush=True)


if __name__ == "__main__":
    main()
