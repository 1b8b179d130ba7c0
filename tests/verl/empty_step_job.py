"""verl's real ``AgentModeDaemon`` (v0) on a training step in which no rollout carries triplets.

    python -m tests.verl.empty_step_job PORT SIGNAL_DIR

One training batch of ``BATCH`` tasks, answered by ``EmptyAgent`` workers (a reward, no
triplets: the agent's tracer missed its calls); SIGNAL_DIR/empty_step.json gets the batch's
record (``daemon_job.run_batch``), whose ``outcome`` is what ``get_train_data_batch`` raised.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .daemon_job import build_daemon, run_batch
from .parts import tokenizer

BATCH: list[str | None] = [None, None]


def main(port: int, signal_dir: Path) -> None:
    tokenizer_ = tokenizer()
    daemon = build_daemon(port, tokenizer_)
    daemon.start()
    record = run_batch(daemon, tokenizer_, 1, "train", BATCH)
    (signal_dir / "empty_step.json").write_text(json.dumps(record))
    print("daemon job finished", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
