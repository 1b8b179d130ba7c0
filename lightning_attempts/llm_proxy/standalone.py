"""``StandaloneProxy``: the attempt-aware LLM proxy ``lightning-attempts serve`` runs beside its server.

It is an ``AttachedProxy`` in front of a fixed list of backends. Under verl the daemon
forgets every attempt's recorded calls at each step; ``serve`` has no steps, so here a
task's records go as the task finishes (its result stored, or cancelled: the server's
``on_task_finished``), with its attempts' routes. A call that ends once its attempt is no
longer live is not recorded (its task may already be finished, and nothing reads it).
Memory then holds the records of unfinished tasks only, within ``CallRecords``' bounds.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..server import AttemptAwareServer
from .app import Liveness
from .attached import AttachedProxy
from .records import CallRecord, CallRecords
from .targets import Attempt


class UnfinishedTaskRecords(CallRecords):
    """``CallRecords`` kept while their task is unfinished: ``discard_task`` forgets all its attempts' at once."""

    def __init__(self, liveness: Liveness) -> None:
        super().__init__()
        self._liveness = liveness
        self._attempts_of: dict[str, set[str]] = {}
        """Each unfinished task's attempts that had a call recorded (possibly evicted since)."""
        self.ended_not_live = 0
        """Calls not recorded because their attempt was no longer live when they ended."""

    def add(self, attempt: Attempt, record: CallRecord) -> None:
        if self._liveness(attempt.rollout_id, attempt.attempt_id) is not None:
            self.ended_not_live += 1
            return
        self._attempts_of.setdefault(attempt.rollout_id, set()).add(attempt.attempt_id)
        super().add(attempt, record)

    def discard_task(self, rollout_id: str) -> set[str]:
        """Forget the records of every attempt of the task; return those attempts' ids."""
        attempt_ids = self._attempts_of.pop(rollout_id, set())
        for attempt_id in attempt_ids:
            self.discard(rollout_id, attempt_id)
        return attempt_ids

    def clear(self) -> None:
        super().clear()
        self._attempts_of.clear()


class StandaloneProxy(AttachedProxy):
    """An ``AttachedProxy`` in front of ``backends`` (``host:port`` each) that forgets a task's calls as it finishes."""

    def __init__(
        self, server: AttemptAwareServer, backends: Sequence[str], port: int, timeout_seconds: float, *, host: str
    ) -> None:
        fixed = tuple(backends)
        super().__init__(server, lambda: fixed, port, timeout_seconds, host=host)
        self.backends = fixed
        self.records = UnfinishedTaskRecords(server.liveness)
        self.proxy.records = self.records
        server.on_task_finished(self._task_finished)

    def _task_finished(self, rollout_id: str) -> None:
        """The server's ``on_task_finished``: forget the task's records and routes (no await, no store call)."""
        for attempt_id in self.records.discard_task(rollout_id):
            self.proxy.forget(rollout_id, attempt_id)
