"""verl's real ``AgentModeDaemon`` (v0) waiting on a batch whose worker is killed mid-rollout.

    python -m tests.verl.dead_worker_job PORT SIGNAL_DIR LLM_TIMEOUT_SECONDS

One training batch of ``BATCH`` tasks, the first ``doomed``: its first claim works until the
test kills that worker with SIGKILL (the test notes when, ``killed``). The daemon's
``llm_timeout_seconds`` (its server's task timeout) is LLM_TIMEOUT_SECONDS; the lease, if any,
is what the switch gives (``LIGHTNING_ATTEMPTS_UNRESPONSIVE_SECONDS`` in the test's
environment). SIGNAL_DIR/dead_worker.json gets the batch's record (``daemon_job.run_batch``),
the server's options, and, on the attempt-aware server, the doomed task's attempts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .daemon_job import build_daemon, on_server_loop, run_batch
from .parts import tokenizer

BATCH: list[str | None] = ["doomed", None, None, None]


def main(port: int, signal_dir: Path, llm_timeout: float) -> None:
    tokenizer_ = tokenizer()
    daemon = build_daemon(port, tokenizer_, timeout=llm_timeout)
    server: Any = daemon.server
    daemon.start()
    report: dict[str, Any] = {"task_timeout_seconds": server._task_timeout_seconds}
    report["unresponsive_seconds"] = getattr(server, "unresponsive_seconds", None)
    report["record"] = record = run_batch(daemon, tokenizer_, 1, "train", BATCH)
    if hasattr(server, "attempt_history"):
        (doomed,) = record["slow"]
        report["history"] = on_server_loop(daemon, lambda: server.attempt_history(doomed))
    (signal_dir / "dead_worker.json").write_text(json.dumps(report))
    print("daemon job finished", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]))
