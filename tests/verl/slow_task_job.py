"""verl's real ``AgentModeDaemon`` (v0) on a batch with a task whose agent always needs more than the timeout.

    python -m tests.verl.slow_task_job PORT SIGNAL_DIR

One training batch: an ``overtime`` task (its agent needs 1.5 task timeouts, every time) and an
ordinary one. SIGNAL_DIR/slow_task.json gets the batch's record (``daemon_job.run_batch``) and,
on the attempt-aware server, the overtime task's attempts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .daemon_job import build_daemon, on_server_loop, run_batch
from .parts import tokenizer

BATCH: list[str | None] = ["overtime", None]


def main(port: int, signal_dir: Path) -> None:
    tokenizer_ = tokenizer()
    daemon = build_daemon(port, tokenizer_)
    server: Any = daemon.server
    daemon.start()
    report: dict[str, Any] = {"record": (record := run_batch(daemon, tokenizer_, 1, "train", BATCH))}
    if hasattr(server, "attempt_history"):
        (slow,) = record["slow"]
        report["history"] = on_server_loop(daemon, lambda: server.attempt_history(slow))
    (signal_dir / "slow_task.json").write_text(json.dumps(report))
    print("daemon job finished", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
