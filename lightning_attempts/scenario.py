"""The seed's failure as a library: a verl-like training loop with a straggling worker.

A controller behaves like verl's ``AgentModeDaemon``: it queues a batch, polls
``retrieve_completed_rollouts`` until it holds as many rollouts as it queued, takes a
short "training step", queues the next batch, and drains at the end. Workers are the
installed release's own runner (``AgentRunner`` in 0.1.x, ``LegacyAgentRunner`` in 0.2+)
and client (``AttemptAwareClient`` for ``"shim"`` workers, upstream's
``AgentLightningClient`` for ``"old"`` ones), each in a thread of its own; the first
``stragglers`` workers take ``straggle_factor`` task timeouts on every task they claim.

Against upstream's server the straggler's late result is stored too: it lands in a
later batch, or twice in one, or after the last (verl then dies on its ``KeyError`` or
its ``len(completed) == total_queued`` assertion). Against ``AttemptAwareServer`` every
batch holds exactly its own tasks, once each; a straggler's result that carries its
attempt id is dropped, but one posted by an old client while its task's re-claim is live
cannot be told from the live one's and may be stored instead (``unverified_reclaimed``).

    report = scenario.run(AttemptAwareServer, ["shim", "old", "old", "shim"])
    assert report.clean
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .client import AttemptAwareClient
from .compat import AgentLightningClient, AgentLightningServer, LegacyRunner
from .server import AttemptAwareServer
from .testing import NullTracer, ServerThread, serve_in_thread

logger = logging.getLogger(__name__)

WorkerKind = Literal["shim", "old"]
WORKER_KINDS: tuple[WorkerKind, ...] = ("shim", "old")


@dataclass
class BatchReport:
    """What the controller saw while waiting for one batch."""

    index: int
    queued: int
    received: int = 0
    """Rollouts retrieved while this batch was the current one (verl's ``len(completed)``)."""
    duplicates: int = 0
    """Rollouts whose id had already been received, in this batch or an earlier one."""
    from_other_batch: int = 0
    """Rollouts of a task queued in an earlier batch."""
    drops: dict[str, int] = field(default_factory=dict[str, int])
    """Results the server dropped while this batch ran, by reason (AttemptAwareServer only)."""
    seconds: float = 0.0

    @property
    def held(self) -> bool:
        """Whether verl's ``len(completed) == total_queued`` held, with this batch's own ids."""
        return self.received == self.queued and not self.duplicates and not self.from_other_batch


@dataclass
class ScenarioReport:
    """The whole run: per-batch figures, what arrived after the last batch, the server's drops."""

    server: str
    batches: list[BatchReport] = field(default_factory=list[BatchReport])
    late_after_last_batch: int = 0
    """Rollouts retrieved during the drain, after the last batch was complete."""
    late_duplicates: int = 0
    """Of those, rollouts whose id had already been received."""
    submitted: int = 0
    """Results the workers' runners posted (stop tasks excluded): more than queued once a claim expired."""
    stats: dict[str, Any] | None = None
    """``attempt_stats()`` of an AttemptAwareServer at the end (None for upstream's)."""
    seconds: float = 0.0

    @property
    def queued(self) -> int:
        return sum(b.queued for b in self.batches)

    @property
    def stored(self) -> int:
        """Rollouts the controller retrieved, in batches and after them."""
        return sum(b.received for b in self.batches) + self.late_after_last_batch

    @property
    def duplicates(self) -> int:
        return sum(b.duplicates for b in self.batches) + self.late_duplicates

    @property
    def from_other_batch(self) -> int:
        return sum(b.from_other_batch for b in self.batches)

    @property
    def held_every_batch(self) -> bool:
        """Whether ``len(completed) == total_queued`` held for every batch."""
        return all(b.held for b in self.batches)

    @property
    def clean(self) -> bool:
        """Every batch held and nothing arrived after the last one."""
        return self.held_every_batch and not self.late_after_last_batch

    @property
    def drops(self) -> dict[str, int]:
        """The server's drops by reason (empty for upstream's server, which drops nothing)."""
        return dict(self.stats["dropped"]) if self.stats else {}

    @property
    def unverified_reclaimed(self) -> int:
        """Results stored without an attempt id (old clients) for a task claimed more than once.

        Any of them may be a superseded attempt's: nothing tells a straggler's result from
        the live claim's. 0 for upstream's server, which counts nothing.
        """
        return int(self.stats["accepted_unverified_reclaimed"]) if self.stats else 0

    @property
    def salvaged(self) -> int:
        """Results of superseded attempts stored on purpose (``stale_policy="salvage"``)."""
        return int(self.stats["salvaged"]) if self.stats else 0


@dataclass(frozen=True)
class Scenario:
    """The knobs of one run; the defaults finish in a few seconds."""

    batches: int = 4
    batch_size: int = 8
    task_timeout: float = 0.5
    straggle_factor: float = 2.5
    """A straggler's rollouts take this many task timeouts."""
    stragglers: int = 1
    """The first this many workers of the fleet straggle."""
    fast_seconds: float = 0.1
    """How long the other workers' rollouts take."""
    training_step_seconds: float = 0.05
    drain_seconds: float | None = None
    """How long to wait for late results after the last batch (default: 2x a straggle)."""
    batch_deadline: float = 60.0
    """Give up on a batch that is not complete after this long (it then did not hold)."""
    poll_interval: float = 0.02
    """The workers' clients' poll interval, and the controller's."""

    @property
    def straggle_seconds(self) -> float:
        return self.task_timeout * self.straggle_factor


class _Tally:
    """Results the agents produced, counted across the worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rollouts = 0

    def add(self) -> None:
        with self._lock:
            self.rollouts += 1


def _make_agent(delay: float, tally: _Tally, stopped: threading.Event) -> Any:
    from agentlightning import LitAgent

    class TimedAgent(LitAgent):  # pyright: ignore[reportMissingTypeArgument]
        """Takes ``delay`` seconds per task; a ``{"stop": true}`` task ends its worker.

        The v0.1 signature (with ``rollout_id``) is accepted by every release's runner.
        """

        def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
            if task.get("stop"):
                stopped.set()
                return 0.0
            time.sleep(delay)  # the rollout's own work
            tally.add()
            return 1.0

    return TimedAgent()


def _worker(
    endpoint: str, kind: WorkerKind, delay: float, index: int, scenario: Scenario, tally: _Tally
) -> threading.Thread:
    stopped = threading.Event()
    client_class = AttemptAwareClient if kind == "shim" else AgentLightningClient
    client = client_class(endpoint, poll_interval=scenario.poll_interval, timeout=10)
    runner = LegacyRunner(
        agent=_make_agent(delay, tally, stopped),
        client=client,
        tracer=NullTracer(),  # pyright: ignore[reportArgumentType]
        triplet_exporter=None,  # pyright: ignore[reportArgumentType]
        worker_id=index,
    )

    def loop() -> None:
        while not stopped.is_set():
            runner.run()  # poll one task, run it, post its result

    return threading.Thread(target=loop, name=f"worker-{index}-{kind}", daemon=True)


def free_port() -> int:
    """A loopback port free right now (upstream's server cannot bind port 0 itself)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _quiet_uvicorn() -> Generator[None]:
    """One log line per request would drown the story; restore the levels afterwards."""
    loggers = [logging.getLogger(name) for name in ("uvicorn.access", "uvicorn.error")]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)


def run(
    server_factory: Callable[..., AgentLightningServer],
    fleet: Sequence[WorkerKind],
    scenario: Scenario = Scenario(),
    *,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> ScenarioReport:
    """Run the training loop against a fresh server with one worker per ``fleet`` entry.

    ``server_factory`` is a server class (or a partial of one) taking upstream's constructor
    arguments. The first ``scenario.stragglers`` entries of ``fleet`` straggle. Every thread
    and server started here is ended before returning.
    """
    from agentlightning.types import PromptTemplate

    unknown = set(fleet) - set(WORKER_KINDS)
    if unknown or not fleet:
        raise ValueError(f"fleet must be a non-empty list of {WORKER_KINDS}, not {list(fleet)}")
    if not 0 <= scenario.stragglers < len(fleet):
        raise ValueError(f"stragglers must leave at least one fast worker: {scenario.stragglers} of {len(fleet)}")
    server = server_factory(host="127.0.0.1", port=free_port(), task_timeout_seconds=scenario.task_timeout)
    report = ScenarioReport(server=type(server).__name__)
    tally = _Tally()
    started = time.monotonic()
    with _quiet_uvicorn(), serve_in_thread(server) as served:
        served.call(server.update_resources({"prompt": PromptTemplate(template="hi", engine="f-string")}))
        delays = [
            scenario.straggle_seconds if i < scenario.stragglers else scenario.fast_seconds for i in range(len(fleet))
        ]
        workers = [
            _worker(served.endpoint, kind, delay, i, scenario, tally)
            for i, (kind, delay) in enumerate(zip(fleet, delays, strict=True))
        ]
        for worker in workers:
            worker.start()
        try:
            _train(served, scenario, report, on_batch)
        finally:
            stuck = _stop(served, workers, scenario)
    report.submitted = tally.rollouts
    report.seconds = time.monotonic() - started
    if stuck:
        raise RuntimeError(f"worker threads did not stop: {', '.join(stuck)}")
    return report


def _train(
    served: ServerThread[Any],
    scenario: Scenario,
    report: ScenarioReport,
    on_batch: Callable[[BatchReport], None] | None,
) -> None:
    """verl's loop: each batch until complete, a training step, then a drain for late results."""
    server = served.server
    seen: Counter[str] = Counter()
    earlier: set[str] = set()
    drops = _drops(served)
    for index in range(scenario.batches):
        batch = _run_batch(served, index, scenario, earlier, seen)
        now = _drops(served)
        batch.drops = {reason: n - drops.get(reason, 0) for reason, n in now.items() if n > drops.get(reason, 0)}
        drops = now
        report.batches.append(batch)
        if on_batch is not None:
            on_batch(batch)
        time.sleep(scenario.training_step_seconds)  # the "training step"
    drain = scenario.drain_seconds if scenario.drain_seconds is not None else 2 * scenario.straggle_seconds
    deadline = time.monotonic() + drain
    while time.monotonic() < deadline:
        for rollout in served.call(server.retrieve_completed_rollouts()):
            report.late_after_last_batch += 1
            report.late_duplicates += seen[rollout.rollout_id] > 0
            seen[rollout.rollout_id] += 1
        time.sleep(scenario.poll_interval)
    if isinstance(server, AttemptAwareServer):
        report.stats = served.run(server.attempt_stats)


def _run_batch(
    served: ServerThread[Any], index: int, scenario: Scenario, earlier: set[str], seen: Counter[str]
) -> BatchReport:
    """Queue a batch and poll until ``len(completed) == queued``, as verl's daemon does."""
    server = served.server
    started = time.monotonic()
    queued = {
        served.call(server.queue_task({"batch": index, "i": i}, mode="train")) for i in range(scenario.batch_size)
    }
    batch = BatchReport(index=index, queued=len(queued))
    completed: dict[str, Any] = {}
    deadline = started + scenario.batch_deadline
    while len(completed) < len(queued) and time.monotonic() < deadline:
        for rollout in served.call(server.retrieve_completed_rollouts()):
            rollout_id: str = rollout.rollout_id
            batch.duplicates += seen[rollout_id] > 0
            batch.from_other_batch += rollout_id in earlier
            seen[rollout_id] += 1
            completed[rollout_id] = rollout
            batch.received += 1
        time.sleep(scenario.poll_interval)
    if len(completed) < len(queued):
        logger.warning(
            "Batch %d incomplete after %.0fs: %d of %d", index, scenario.batch_deadline, len(completed), len(queued)
        )
    earlier.update(queued)
    batch.seconds = time.monotonic() - started
    return batch


def _drops(served: ServerThread[Any]) -> dict[str, int]:
    server = served.server
    if not isinstance(server, AttemptAwareServer):
        return {}
    return dict(served.run(server.attempt_stats)["dropped"])


def _stop(served: ServerThread[Any], workers: list[threading.Thread], scenario: Scenario) -> list[str]:
    """Queue one stop task per worker and wait for every worker thread; return the stuck ones."""
    for _ in workers:
        served.call(served.server.queue_task({"stop": True}, mode="train"))
    deadline = time.monotonic() + scenario.straggle_seconds + 30
    for worker in workers:
        worker.join(timeout=max(0.0, deadline - time.monotonic()))
    return [worker.name for worker in workers if worker.is_alive()]
