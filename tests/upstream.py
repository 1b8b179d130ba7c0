"""Driving the installed agentlightning release's own runner: a null tracer and a scripted agent."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from agentlightning import LitAgent
from agentlightning.types import PromptTemplate

from lightning_attempts.compat import AgentLightningClient, LegacyRunner
from lightning_attempts.testing import NullTracer

from .waiting import until

RESOURCES: dict[str, Any] = {"prompt": PromptTemplate(template="hi", engine="f-string")}
"""The runner skips tasks when the server has no resources, and upstream 404s an empty dict."""


def make_runner(agent: Any, client: AgentLightningClient, worker_id: int) -> Any:
    """The release's legacy runner (AgentRunner in 0.1.x, LegacyAgentRunner in 0.2+)."""
    return LegacyRunner(agent=agent, client=client, tracer=NullTracer(), triplet_exporter=None, worker_id=worker_id)  # type: ignore[arg-type]


class StragglerAgent(LitAgent):  # pyright: ignore[reportMissingTypeArgument]
    """Rewards 1.0, except that the first claim of a ``{"slow": True}`` task outlasts its timeout.

    That first claim expires the claim (``expire()``), waits until another worker has
    re-claimed the task and then until its own stale result would be posted first
    (``stale_first()``), and rewards 0.0: a stored 0.0 is a stale result. A ``{"stop": True}``
    task ends the worker that runs it. The v0.1 signature (``rollout_id``) works on every release.
    """

    def __init__(self, expire: Callable[[], None], stale_posted: Callable[[str], bool]) -> None:
        super().__init__()
        self._expire = expire
        self._stale_posted = stale_posted
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self._reclaimed: dict[str, threading.Event] = {}
        self.stopped: set[int] = set()

    def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
        if task.get("stop"):
            self.stopped.add(threading.get_ident())
            return 0.0
        with self._lock:
            self.calls[rollout_id] += 1
            call = self.calls[rollout_id]
            reclaimed = self._reclaimed.setdefault(rollout_id, threading.Event())
        if task.get("slow") and call == 1:
            self._expire()
            assert reclaimed.wait(timeout=30), "nobody re-claimed the slow task"
            return 0.0
        if call == 2:
            reclaimed.set()
            until(lambda: self._stale_posted(rollout_id))
        return 1.0

    async def training_rollout_async(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
        if task.get("stop"):  # here, in the runner's thread, not in to_thread's
            return self.training_rollout(task, rollout_id, resources)
        return await asyncio.to_thread(self.training_rollout, task, rollout_id, resources)


class Stoppable(Protocol):
    """An agent that records the threads that ran a ``{"stop": True}`` task."""

    stopped: set[int]


def run_until_stopped(agent: Stoppable, runner: Any, use_async: bool) -> None:
    """Run the upstream runner one task at a time until this thread ran a stop task."""
    me = threading.get_ident()
    if use_async:

        async def loop() -> None:
            while me not in agent.stopped:
                await runner.run_async()

        asyncio.run(loop())
    else:
        while me not in agent.stopped:
            runner.run()


def stop_fleet(served: Any, threads: list[threading.Thread]) -> None:
    """Queue one stop task per worker thread and join them (30 s each at most)."""
    for _ in threads:
        served.call(served.server.queue_task({"stop": True}, mode="train"))
    for thread in threads:
        thread.join(timeout=30)
