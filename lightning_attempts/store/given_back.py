"""Claims given back unrun: by which worker, why, and whether every worker gives back every claim.

A worker gives a claim back *unrun* when its runner polls again without having run the task
(``models.ReleaseReason``): ``no_resources``, its runner could not fetch the task's resources (a network
error, a bad proxy, a trainer that never called ``update_resources``), or ``skipped``, for another
reason. That says something of the worker, nothing of the task: such a claim does not count toward
``max_claims``, and holds the task for no time of its ``task_budget``. A task every worker gives
back still ends: its budget runs while it waits with no claim at all in flight (``budget.py``).

What this module adds is the telling: one WARNING per worker when it has given back
``WORKER_WARNING_AT`` claims unrun (its name and address, how many, why), and one when
``FLEET_WARNING_AT`` claims in a row were given back unrun with no result stored between,
repeated at ten times as many, and so on: then no worker can run tasks, and the batch waits, where
upstream's runner skips the task and its log says "Failed to fetch resources. Skipping." for ever.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from ..models import ReleaseReason
from ..options import Clock

logger = logging.getLogger("lightning_attempts.store")

UNRUN: frozenset[ReleaseReason | None] = frozenset({"no_resources", "skipped"})
"""The reasons that say the task never ran on that worker."""

WORKER_WARNING_AT = 3
"""Claims a worker gives back unrun before its one WARNING (one or two are a blip, logged at INFO)."""
FLEET_WARNING_AT = 10
"""Claims in a row given back unrun, no result stored between, before the fleet's WARNING (then x10, x100...)."""
RECENT_SECONDS = 300.0
"""A worker that gave back a claim unrun this recently counts in ``workers_giving_back``."""
REMEMBERED_WORKERS = 1024
"""Workers remembered (the least recent forgotten first)."""


@dataclass(slots=True)
class _Worker:
    given_back: int = 0
    last: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter[str])


class GivenBack:
    """The claims given back unrun, by worker, and the run of them since the last stored result."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._workers: OrderedDict[str, _Worker] = OrderedDict()
        self._streak: Counter[str] = Counter()  # by worker, since the last stored result
        self._next_fleet_warning = FLEET_WARNING_AT

    def unrun(self, worker: str, reason: ReleaseReason, rollout_id: str, *, has_resources: bool, queued: int) -> None:
        """``worker`` gave back its claim of ``rollout_id`` unrun, for ``reason``; ``queued`` tasks wait."""
        known = self._workers.pop(worker, None) or _Worker()
        self._workers[worker] = known  # the most recent last
        while len(self._workers) > REMEMBERED_WORKERS:
            self._workers.popitem(last=False)
        known.given_back += 1
        known.last = self._clock()
        known.reasons[reason] += 1
        self._streak[worker] += 1
        hint = _hint(reason, has_resources)
        if known.given_back == WORKER_WARNING_AT:
            logger.warning(
                "Worker %s has given back %d claims without running them (%s): its tasks go to other workers, "
                "and it polls less often while it cannot run them. %s",
                worker,
                known.given_back,
                _reasons(known.reasons),
                hint,
            )
        else:
            logger.info("Worker %s gave back task %s without running it (%s)", worker, rollout_id, reason)
        streak = sum(self._streak.values())
        if streak >= self._next_fleet_warning:
            self._next_fleet_warning *= 10
            logger.warning(
                "No worker is running tasks: %d claims were given back unrun since the last stored result, by %d "
                "worker(s) (%s); %d tasks wait. These claims do not count toward max_claims; a "
                "task ends when it has waited out its task_budget with nothing in flight. %s",
                streak,
                len(self._streak),
                ", ".join(f"{name}: {count}" for name, count in self._streak.most_common(5)),
                queued,
                hint,
            )

    def result_stored(self) -> None:
        """A result was stored: some worker runs tasks."""
        if self._streak:
            streak = sum(self._streak.values())
            if streak >= FLEET_WARNING_AT:
                logger.warning("A result was stored again, after %d claims given back unrun", streak)
            self._streak.clear()
            self._next_fleet_warning = FLEET_WARNING_AT

    def stats(self) -> dict[str, int]:
        """``workers_giving_back`` (recently) and ``unrun_since_last_result``."""
        recent = self._clock() - RECENT_SECONDS
        giving_back = sum(worker.last >= recent for worker in self._workers.values())
        return {"workers_giving_back": giving_back, "unrun_since_last_result": sum(self._streak.values())}

    def by_worker(self) -> dict[str, int]:
        """How many claims each remembered worker gave back unrun, most recent worker last."""
        return {name: worker.given_back for name, worker in self._workers.items()}


def _reasons(reasons: Counter[str]) -> str:
    return ", ".join(f"{reason} x{count}" for reason, count in reasons.most_common())


def _hint(reason: str, has_resources: bool) -> str:
    """What to look at, by why the claim came back."""
    if reason == "no_resources" and not has_resources:
        return (
            "This server has no resources: the trainer must call update_resources (verl's daemon does) before "
            "workers can run tasks."
        )
    if reason == "no_resources":
        return "Its runner could not fetch the task's resources: check that worker's network, proxy and server URL."
    return "Its runner polled again without running the task: see that worker's log."
