"""The seed's failure as a library: a verl-like training loop with a straggling worker.

A controller behaves like verl's ``AgentModeDaemon``: it queues a batch, polls
``retrieve_completed_rollouts`` until it holds as many rollouts as it queued, takes a
short "training step", queues the next batch, and drains at the end. Workers are the
installed release's own runner and client (``AttemptAwareClient`` for ``"shim"``
workers, upstream's ``AgentLightningClient`` for ``"old"`` ones), each in a thread;
the first worker straggles past the task timeout on every task it takes.

Against upstream's server the straggler's late result is accepted too: it lands in a
later batch (verl then dies on its ``KeyError`` or its ``len(completed) == total_queued``
assertion). Against ``AttemptAwareServer`` it is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .client import AttemptAwareClient
from .compat import AgentLightningClient, AgentLightningServer, LegacyRunner
from .server import AttemptAwareServer
from .testing import serve_in_thread

WorkerKind = Literal["shim", "old"]


@dataclass
class BatchReport:
    """What the controller saw while waiting for one batch."""

    index: int
    queued: int
    received: int = 0
    """Rollouts retrieved while this batch was the current one."""
    duplicates: int = 0
    """Rollouts of a task of this batch that had already been received."""
    from_other_batch: int = 0
    """Rollouts of a task queued in an earlier batch."""
    seconds: float = 0.0

    @property
    def held(self) -> bool:
        """Whether verl's ``len(completed) == total_queued`` (with the right ids) held."""
        return self.received == self.queued and not self.duplicates and not self.from_other_batch


@dataclass
class ScenarioReport:
    """The whole run: per-batch figures, what arrived after the last batch, the server's drops."""

    server: str
    batches: list[BatchReport] = field(default_factory=list[BatchReport])
    late_after_last_batch: int = 0
    stats: dict[str, Any] | None = None
    """``attempt_stats()`` of an AttemptAwareServer (None for upstream's)."""
    seconds: float = 0.0

    @property
    def queued(self) -> int:
        return sum(b.queued for b in self.batches)

    @property
    def stored(self) -> int:
        return sum(b.received for b in self.batches) + self.late_after_last_batch

    @property
    def duplicates(self) -> int:
        return sum(b.duplicates for b in self.batches)

    @property
    def from_other_batch(self) -> int:
        return sum(b.from_other_batch for b in self.batches)

    @property
    def clean(self) -> bool:
        """No batch saw a duplicate or a foreign rollout, and nothing arrived after the end."""
        return all(b.held for b in self.batches) and not self.late_after_last_batch

    @property
    def drops(self) -> dict[str, int]:
        return dict(self.stats["dropped"]) if self.stats else {}


@dataclass(frozen=True)
class Scenario:
    """The knobs of one run; the defaults finish in a few seconds."""

    batches: int = 4
    batch_size: int = 8
    workers: int = 4
    task_timeout: float = 0.5
    straggle_factor: float = 2.5
    """The straggler's rollouts take this many task timeouts."""
    fast_seconds: float = 0.1
    training_step_seconds: float = 0.05
    drain_seconds: float | None = None
    """How long to wait for late results after the last batch (default: 2x a straggle)."""
    batch_deadline: float = 60.0


def _make_agent(delay: float, stopped: set[int]) -> Any:
    from agentlightning import LitAgent

    class TimedAgent(LitAgent):  # pyright: ignore[reportMissingTypeArgument]
        """Takes ``delay`` seconds per task; a ``{"stop": true}`` task ends its worker."""

        def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
            if task.get("stop"):
                stopped.add(threading.get_ident())
                return 0.0
            time.sleep(delay)  # the rollout's own work
            return 1.0

    return TimedAgent()


class _NullTracer:
    def trace_context(self, name: str | None = None, **_: Any) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    _trace_context_sync = trace_context

    def get_last_trace(self) -> list[Any]:
        return []


def _worker(endpoint: str, kind: WorkerKind, delay: float, index: int) -> threading.Thread:
    stopped: set[int] = set()
    client_class = AttemptAwareClient if kind == "shim" else AgentLightningClient
    client = client_class(endpoint, poll_interval=0.02, timeout=10)
    runner = LegacyRunner(
        agent=_make_agent(delay, stopped),
        client=client,
        tracer=_NullTracer(),  # pyright: ignore[reportArgumentType]
        triplet_exporter=None,  # pyright: ignore[reportArgumentType]
        worker_id=index,
    )

    def loop() -> None:
        while threading.get_ident() not in stopped:
            runner.run()

    return threading.Thread(target=loop, name=f"worker-{index}-{kind}", daemon=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(
    server_factory: Callable[..., AgentLightningServer],
    fleet: Sequence[WorkerKind],
    scenario: Scenario = Scenario(),
    *,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> ScenarioReport:
    """Run the training loop against a fresh server with one worker per ``fleet`` entry.

    ``server_factory`` is a server class (or a partial of one) taking upstream's constructor
    arguments. ``fleet[0]`` is the straggler. Every thread and server started here is ended
    before returning.
    """
    from agentlightning.types import PromptTemplate

    server = server_factory(host="127.0.0.1", port=free_port(), task_timeout_seconds=scenario.task_timeout)
    for name in ("uvicorn.access", "uvicorn.error"):  # one line per request would drown the story
        logging.getLogger(name).setLevel(logging.WARNING)
    report = ScenarioReport(server=type(server).__name__)
    started = time.monotonic()
    with serve_in_thread(server) as served:
        served.call(server.update_resources({"prompt": PromptTemplate(template="hi", engine="f-string")}))
        straggle = scenario.task_timeout * scenario.straggle_factor
        delays = [straggle] + [scenario.fast_seconds] * (len(fleet) - 1)
        workers = [
            _worker(served.endpoint, kind, delay, i) for i, (kind, delay) in enumerate(zip(fleet, delays, strict=True))
        ]
        for worker in workers:
            worker.start()
        try:
            earlier: set[str] = set()
            for index in range(scenario.batches):
                batch = _run_batch(served.call, server, index, scenario, earlier)
                report.batches.append(batch)
                if on_batch is not None:
                    on_batch(batch)
                time.sleep(scenario.training_step_seconds)  # the "training step"
            drain = scenario.drain_seconds if scenario.drain_seconds is not None else 2 * straggle
            deadline = time.monotonic() + drain
            while time.monotonic() < deadline:
                report.late_after_last_batch += len(served.call(server.retrieve_completed_rollouts()))
                time.sleep(0.02)
            if isinstance(server, AttemptAwareServer):
                report.stats = server.attempt_stats()
        finally:
            for _ in workers:
                served.call(server.queue_task({"stop": True}, mode="train"))
            for worker in workers:
                worker.join(timeout=straggle + 30)
    report.seconds = time.monotonic() - started
    return report


def _run_batch(
    call: Callable[..., Any], server: AgentLightningServer, index: int, scenario: Scenario, earlier: set[str]
) -> BatchReport:
    """Queue a batch and poll until ``len(completed) == queued``, as verl's daemon does."""
    started = time.monotonic()
    queued = {call(server.queue_task({"batch": index, "i": i}, mode="train")) for i in range(scenario.batch_size)}
    batch = BatchReport(index=index, queued=len(queued))
    completed: dict[str, Any] = {}
    deadline = started + scenario.batch_deadline
    while len(completed) < len(queued) and time.monotonic() < deadline:
        for rollout in call(server.retrieve_completed_rollouts()):
            rollout_id = rollout.rollout_id
            if rollout_id in completed:
                batch.duplicates += 1
            elif rollout_id in earlier:
                batch.from_other_batch += 1
            completed[rollout_id] = rollout
            batch.received += 1
        time.sleep(0.01)
    earlier.update(queued)
    batch.seconds = time.monotonic() - started
    return batch
