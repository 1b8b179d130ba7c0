"""verl's launch path in small: a local Ray cluster as ``run_ppo`` starts it, the daemon built in an actor.

    python -m tests.verl.ray_job PORT REPORT

``agentlightning.verl.entrypoint.run_ppo`` calls ``ray.init(runtime_env={"env_vars": {...}},
num_cpus=...)`` and builds the trainer, hence ``AgentModeDaemon`` and its server, inside a
``TaskRunner`` actor: a fresh process. This job does the same: the driver imports the
daemon class (0.2+'s ``main`` does, and hands it to the actor), the actor builds the daemon
and starts it, and the driver asks the served port for ``GET /attempts/stats`` (200 from
the attempt-aware server, 404 from upstream's); the report names the daemon's and the server's
classes. ``LIGHTNING_ATTEMPTS_INSTALL`` reaches the
actor only through the driver's environment: it is not in ``runtime_env``. Writes a JSON
report to REPORT (stdout carries Ray's forwarded actor output); shuts the cluster down in every case.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .parts import TIMEOUT_SECONDS, tokenizer

RUN_PPO_ENV_VARS = {"TOKENIZERS_PARALLELISM": "true", "NCCL_DEBUG": "WARN", "VLLM_LOGGING_LEVEL": "WARN"}


class DaemonHost:
    """The actor: like verl's ``TaskRunner``, it builds the daemon in its own process.

    Defined in the job's ``__main__``, so Ray ships it by value; it references nothing of
    ``tests`` (the actor's interpreter need not find that package).
    """

    def __init__(self) -> None:
        self.daemon: Any = None

    def start_daemon(self, daemon_class: Any, port: int, tokenizer_: Any, timeout: float) -> dict[str, Any]:
        options: dict[str, Any] = {"port": port, "train_rollout_n": 1, "train_information": {}, "tokenizer": tokenizer_}
        options |= {"mini_batch_size": 1, "pad_token_id": tokenizer_.pad_token_id, "llm_timeout_seconds": timeout}
        if "mode" in inspect.signature(daemon_class).parameters:
            options["mode"] = "v0"
        self.daemon = daemon_class(**options)
        self.daemon.start()
        return {
            "pid": os.getpid(),
            "switch": os.environ.get("LIGHTNING_ATTEMPTS_INSTALL"),
            "server": self._classes(self.daemon.server),
            "daemon": self._classes(self.daemon),
        }

    @staticmethod
    def _classes(instance: object) -> list[str]:
        return [f"{c.__module__}.{c.__qualname__}" for c in inspect.getmro(type(instance))]


def status_of(url: str, timeout: float = 60.0) -> int:
    """The status ``url`` answers; the daemon's ``start()`` returns before uvicorn has bound, so retry refusals."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main(port: int, report: Path) -> None:
    ray: Any = importlib.import_module("ray")
    daemon_class: Any = importlib.import_module("agentlightning.verl.daemon").AgentModeDaemon
    ray.init(runtime_env={"env_vars": RUN_PPO_ENV_VARS}, num_cpus=2)  # as run_ppo, on a local cluster
    try:
        host = ray.remote(num_cpus=1)(DaemonHost).remote()
        actor = ray.get(host.start_daemon.remote(daemon_class, port, tokenizer(), TIMEOUT_SECONDS), timeout=300)
        actor["driver_pid"] = os.getpid()
        actor["stats_status"] = status_of(f"http://127.0.0.1:{port}/attempts/stats")
        report.write_text(json.dumps(actor))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
