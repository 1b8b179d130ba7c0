"""Claims ended without their worker's word whose worker never came back: workers stuck in their agents, or dead.

The server ends a claim under its worker when the claim times out, goes silent, is superseded, its task is given
up or cancelled. Such a worker comes back by posting a result (dropped) or a release for that claim; until it
does, it is still inside its agent (the shim stops heartbeating when told, but cannot stop the agent), or dead.
``Heard`` remembers the claims (and, for old clients' results without an attempt id, the tasks) heard from after
they ended; ``count_stranded`` counts the rest, for the server's fleet watch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .records import Attempt, ClaimedTask, FinishedTask

ENDED_BY_SERVER = frozenset({"timed_out", "unresponsive", "superseded", "cancelled"})
"""Outcomes of claims ended without their worker's word (``completed``, ``failed`` and ``released`` are its own)."""


class Heard:
    """Attempt ids and rollout ids heard from after their claims ended, the oldest forgotten beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, key: str) -> None:
        self._ids[key] = None
        self._ids.move_to_end(key)
        if len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._ids


@dataclass(frozen=True, slots=True)
class Stranded:
    """Claims ended under workers that never came back, by how they ended, and the latest of them."""

    counts: Mapping[str, int] = field(default_factory=dict[str, int])
    """By kind: ``given_up`` (the task ran out of claims or budget), or the outcome (``timed_out``,
    ``unresponsive``, ``superseded``, ``cancelled``)."""
    latest: tuple[str, str, str] | None = None
    """The last of them to end: rollout id, attempt id, kind."""
    by_worker: Mapping[str, int] = field(default_factory=dict[str, int])
    """By the worker that claimed them, where the server knows it (``Attempt.worker``)."""

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def count_stranded(
    claimed: Iterable[ClaimedTask], finished: Iterable[tuple[str, FinishedTask]], heard: Heard
) -> Stranded:
    """The claims of ``claimed`` and ``finished`` tasks ended without their worker's word and not ``heard`` from
    since. O(tasks): for occasional reads, not per request."""
    counts: dict[str, int] = {}
    by_worker: dict[str, int] = {}
    latest: tuple[float, str, str, str] | None = None

    def note(rollout_id: str, attempt: Attempt, kind: str) -> None:
        nonlocal latest
        counts[kind] = counts.get(kind, 0) + 1
        if attempt.worker is not None:
            by_worker[attempt.worker] = by_worker.get(attempt.worker, 0) + 1
        ended = attempt.ended_at or 0.0
        if latest is None or ended >= latest[0]:
            latest = (ended, rollout_id, attempt.attempt_id, kind)

    for task in claimed:
        if task.rollout_id not in heard:
            for attempt in task.attempts:
                if attempt.outcome in ENDED_BY_SERVER and attempt.attempt_id not in heard:
                    note(task.rollout_id, attempt, attempt.outcome)
    for rollout_id, done in finished:
        if rollout_id in heard:
            continue
        last = len(done.attempts) - 1
        for index, attempt in enumerate(done.attempts):
            if attempt.outcome in ENDED_BY_SERVER and attempt.attempt_id not in heard:
                given_up = (
                    not done.cancelled and done.stored is None and index == last and attempt.outcome != "superseded"
                )
                note(rollout_id, attempt, "given_up" if given_up else attempt.outcome)
    return Stranded(counts, None if latest is None else latest[1:], by_worker)
