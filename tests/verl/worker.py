"""A rollout worker in its own process: the release's own legacy runner, polling the daemon's server.

    python -m tests.verl.worker ENDPOINT SIGNAL_DIR WORKER_ID

It builds its client as a user's worker script does, ``agentlightning.AgentLightningClient``:
with ``LIGHTNING_ATTEMPTS_INSTALL=1`` in its environment that name is the attempt-aware
shim, without it upstream's. Nothing here calls ``install()``. It runs until it is killed.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import agentlightning
from agentlightning import LitAgent
from agentlightning.types import Triplet

from lightning_attempts.compat import LegacyRunner
from lightning_attempts.testing import NullTracer

from .parts import FRESH, POLL_SECONDS, POSTED_AT, STALE, Signals, tokenizer


class BatchAgent(LitAgent):  # pyright: ignore[reportMissingTypeArgument]
    """Answers with token-id triplets; the first claim of a slow task straggles past the timeout.

    The straggler answers ``STALE`` with reward 0.0, every other claim ``FRESH`` with 1.0, so
    a stale result is visible in what the daemon trains on. ``late``: the straggler waits for
    its batch to finish. ``early``: it waits for the re-claim, and the re-claim waits for the
    straggler's post to be answered and, if the server accepted it, for the batch to finish.
    ``hold``: every claim waits until the daemon job releases the task.
    """

    def __init__(self, signals: Signals) -> None:
        super().__init__()
        self._signals = signals
        self._tokenizer = tokenizer()
        self._answering = threading.local()

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text))

    def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> list[Triplet]:  # type: ignore[override]
        slow, batch = task.get("slow"), task["batch"]
        answer = FRESH
        if slow == "hold":
            self._signals.claim_first(rollout_id)
            self._signals.wait(Signals.released(rollout_id), timeout=120)
        elif slow and self._signals.claim_first(rollout_id):
            answer = STALE
            if slow == "late":
                self._signals.wait(Signals.batch_done(batch))
            else:
                self._signals.wait(Signals.reclaimed(rollout_id))
        elif slow:
            self._signals.set(Signals.reclaimed(rollout_id))
            if slow == "early":
                self._signals.wait(Signals.posted(rollout_id, STALE))
                if self._signals.posted_status(rollout_id, STALE) == "ok":
                    self._signals.wait(Signals.batch_done(batch))
        self._answering.answer = answer
        reward = 1.0 if answer == FRESH else 0.0
        prompt = {"token_ids": self._encode(f"task {task['index']}")}
        return [Triplet(prompt=prompt, response={"token_ids": self._encode(answer)}, reward=reward)]

    def validation_rollout(self, task: Any, rollout_id: str, resources: Any) -> list[Triplet]:  # type: ignore[override]
        return self.training_rollout(task, rollout_id, resources)

    def answered(self, rollout_id: str, reply: dict[str, Any] | None) -> None:
        """Record the server's reply to this thread's last post (the runner posts from the agent's thread)."""
        answer = getattr(self._answering, "answer", FRESH)
        record = {**(reply or {}), POSTED_AT: time.time()}
        self._signals.set(Signals.posted(rollout_id, answer), json.dumps(record))


def main(endpoint: str, signal_dir: str, worker_id: int) -> None:
    client = agentlightning.AgentLightningClient(endpoint=endpoint, poll_interval=POLL_SECONDS)
    agent = BatchAgent(Signals(Path(signal_dir)))
    post = client.post_rollout

    def post_and_record(rollout: Any) -> dict[str, Any] | None:
        reply = post(rollout)
        agent.answered(rollout.rollout_id, reply)
        return reply

    setattr(client, "post_rollout", post_and_record)  # noqa: B010 (an instance attribute over the method)
    kind = type(client)
    print(f"worker {worker_id} client {kind.__module__}.{kind.__qualname__} mro={[c.__name__ for c in kind.__mro__]}")
    print(f"worker {worker_id} ready", flush=True)
    tracer: Any = NullTracer()
    runner: Any = LegacyRunner(agent=agent, client=client, tracer=tracer, triplet_exporter=None, worker_id=worker_id)  # type: ignore[arg-type]
    while True:
        runner.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
