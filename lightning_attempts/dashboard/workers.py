"""The workers a run knows, for the dashboard: who holds claims, who gave claims back unrun, who is stuck.

A claim names its worker (``Attempt.worker``: ``<name> at <address>`` for the shim, the address for an old client),
as a release does, so the three meet on one row. Built from the claims in flight, ``given_back_by_worker`` and the
stranded claims: one pass over the claims in flight, read on the server's loop, never changing the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..store import AttemptAwareDataStore
from ..store.stranded import Stranded


@dataclass(slots=True)
class Worker:
    """One worker as the server knows it."""

    name: str
    holding: int = 0
    """Claims it holds now."""
    leased: int = 0
    """Of those, the ones it heartbeats (silence ends them)."""
    last_heard: float | None = None
    """Wall-clock time of its latest claim or heartbeat among the claims it holds."""
    current: tuple[str, str] | None = None
    """The rollout id and attempt id of the claim it was last heard of."""
    given_back_unrun: int = 0
    stuck: int = 0
    """Claims the server ended under it (timed out, silent, superseded, given up, cancelled) that it never came back
    for: still inside its agent, or dead."""

    def item(self) -> dict[str, Any]:
        """As agentlightning 0.3.0's ``Worker`` (``GET /v1/agl/workers``); the counts in ``heartbeat_stats``."""
        rollout_id, attempt_id = self.current or (None, None)
        return {
            "worker_id": self.name,
            "status": "busy" if self.holding else "idle",
            "heartbeat_stats": {
                "claims_held": self.holding,
                "leased": self.leased,
                "given_back_unrun": self.given_back_unrun,
                "stuck": self.stuck,
            },
            "last_heartbeat_time": self.last_heard,
            "last_dequeue_time": None,
            "last_busy_time": None,
            "last_idle_time": None,
            "current_rollout_id": rollout_id,
            "current_attempt_id": attempt_id,
        }


def known_workers(store: AttemptAwareDataStore, stranded: Stranded) -> list[Worker]:
    """Every worker holding a claim, giving claims back or stuck; the most recently heard of first."""
    workers: dict[str, Worker] = {}
    for claimed in store.book.in_flight:
        attempt = claimed.attempts[-1]
        if attempt.worker is None:  # claimed through the store directly, not over HTTP
            continue
        worker = workers.get(attempt.worker)
        if worker is None:
            worker = workers[attempt.worker] = Worker(attempt.worker)
        worker.holding += 1
        worker.leased += attempt.leased
        heard = attempt.last_heartbeat_at or attempt.claimed_at
        if worker.last_heard is None or heard >= worker.last_heard:
            worker.last_heard, worker.current = heard, (claimed.rollout_id, attempt.attempt_id)
    for name, count in store.given_back_by_worker().items():
        workers.setdefault(name, Worker(name)).given_back_unrun = count
    for name, count in stranded.by_worker.items():
        workers.setdefault(name, Worker(name)).stuck = count
    return sorted(workers.values(), key=lambda worker: worker.last_heard or 0.0, reverse=True)
