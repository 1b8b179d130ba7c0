"""What the verl tier's processes share: a real offline tokenizer, the batch plan, the straggler's signals.

The daemon job, the workers and the tests run in separate processes; they coordinate through
files in one shared directory (``Signals``), so a straggler is held and released on events,
not on racing sleeps. verl, torch, transformers and tokenizers are imported by name at run
time: they exist only in the tier's virtual environments.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TIMEOUT_SECONDS = 3.0
"""The daemon's ``llm_timeout_seconds``, hence its server's ``task_timeout_seconds``."""

POLL_SECONDS = 0.2
"""The workers' client ``poll_interval`` (upstream's default, 5 s, would make every requeue wait)."""

DUMMY_LLM_BACKEND = "127.0.0.1:9"
"""``server_addresses``: the daemon only publishes it through its LLM proxy, which the test agent never calls."""

PLAN: list[tuple[str, list[str | None]]] = [
    ("train", ["late", None, None]),
    ("train", ["early", None, None]),
    ("val", [None, None]),
]
"""Batches in order: mode, and per task whether (and how) its first claim straggles.

``late``: the first claim outlasts the timeout and posts only after its batch finished.
``early``: the first claim outlasts the timeout and posts while the re-claim is live; the
re-claim posts after it, and, if the stale result was accepted, only after the batch finished.
``hold`` (not in the plan; the daemon job's later steps): every claim waits for ``released``.
``doomed`` (not in the plan; ``dead_worker_job.py``): the first claim works until the test kills
its worker with SIGKILL; a re-claim answers at once. ``overtime`` (``slow_task_job.py``): every
claim needs ``OVERTIME`` task timeouts.
"""

OVERTIME = 1.5
"""An ``overtime`` task's agent needs this many task timeouts, every time (``slow_task_job.py``)."""
DOOMED_SECONDS = 600.0
"""How long a ``doomed`` first claim works if nobody kills its worker: the dead-worker job's task timeout."""

ATTEMPT_ID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
"""A regular expression matching an attempt id (a UUID4), as served in an attempt's LLM endpoint."""
STALE, FRESH = "stale answer", "fresh answer"
WORK_SECONDS = 0.5
"""What ``WorkAgent`` (the step-overhead benchmark's worker) spends on each task."""
LLM_ANSWER = "fresh answer"
"""What the stand-in LLM (``llm_job.py``) answers; a worker whose call fails answers ``STALE``."""
ENVIRONMENT_SWITCH = "LIGHTNING_ATTEMPTS_INSTALL"

WORDS = ["<pad>", "<unk>", "task", "fresh", "stale", "answer", *(str(i) for i in range(10))]


def tokenizer() -> Any:
    """A real ``PreTrainedTokenizerFast`` over an in-memory WordLevel model: nothing is downloaded."""
    tokenizers: Any = importlib.import_module("tokenizers")
    transformers: Any = importlib.import_module("transformers")
    model = tokenizers.models.WordLevel(vocab={word: i for i, word in enumerate(WORDS)}, unk_token="<unk>")
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Wait for another process to make ``condition`` true (a file appearing), not for time to pass."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Signals:
    """Files in a shared directory: who claimed a slow task first, re-claims, posts and their answers."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, name: str) -> Path:
        return self.directory / name

    def claim_first(self, rollout_id: str) -> bool:
        """True for exactly one caller per rollout id, across processes (O_EXCL)."""
        try:
            os.close(os.open(self._path(f"claimed-{rollout_id}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def set(self, name: str, content: str = "") -> None:
        temporary = self._path(f".{name}.tmp")
        temporary.write_text(content)
        temporary.replace(self._path(name))  # atomic: a reader never sees it half written

    def get(self, name: str) -> str | None:
        try:
            return self._path(name).read_text()
        except FileNotFoundError:
            return None

    def wait(self, name: str, timeout: float = 60.0) -> str:
        wait_until(lambda: self._path(name).exists(), name, timeout)
        return self._path(name).read_text()

    @staticmethod
    def batch_done(batch: int) -> str:
        return f"batch-{batch}-done"

    @staticmethod
    def reclaimed(rollout_id: str) -> str:
        return f"reclaimed-{rollout_id}"

    @staticmethod
    def claimed_at(rollout_id: str, worker_id: int) -> str:
        """Set by a worker when a claim of the task reached it; holds the time (``time.time()``)."""
        return f"claimed-at-{rollout_id}-{worker_id}"

    def claim_times(self, rollout_id: str) -> list[float]:
        """When each claim of the task reached a worker."""
        return [float(path.read_text()) for path in self.directory.glob(f"claimed-at-{rollout_id}-*")]

    def first_claims(self) -> list[str]:
        """The rollout ids whose first claim ``claim_first`` has given out."""
        return [
            p.name.removeprefix("claimed-")
            for p in self.directory.glob("claimed-*")
            if not p.name.startswith("claimed-at-")
        ]

    def claimed_by(self, rollout_id: str) -> list[int]:
        """The workers a claim of the task reached."""
        return [int(p.name.rsplit("-", 1)[1]) for p in self.directory.glob(f"claimed-at-{rollout_id}-*")]

    @staticmethod
    def released(rollout_id: str) -> str:
        """Set by the daemon job: the claims of a ``hold`` task may answer."""
        return f"released-{rollout_id}"

    @staticmethod
    def posted(rollout_id: str, answer: str) -> str:
        """Set by a worker once the server answered its post of ``answer``; holds the answer's status."""
        return f"posted-{rollout_id}-{answer.split()[0]}"

    def posted_status(self, rollout_id: str, answer: str) -> str | None:
        """The ``status`` of the server's reply; None if not posted yet or without a reply (upstream's
        client returns None for a 409)."""
        content = self.get(self.posted(rollout_id, answer))
        status = None if content is None else json.loads(content).get("status")
        return None if status is None else str(status)

    def sent_at(self, rollout_id: str, answer: str) -> float | None:
        """When (``time.time()``) the worker began to post ``answer`` (it notes it with the reply)."""
        content = self.get(self.posted(rollout_id, answer))
        return None if content is None else float(json.loads(content)[SENT_AT])


SENT_AT = "sent_at"
"""The key, beside the server's reply, under which a worker notes when it began to post."""
