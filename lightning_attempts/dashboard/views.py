"""The store as agentlightning 0.3.0's LightningStore shows a run: tasks as rollouts, claims as attempts, in pages.

Every function here only reads the store (``AttemptAwareDataStore.book``), on the server's loop, and answers
one page: at most ``MAX_LIMIT`` items, each with its task input cut to ``MAX_INPUT_CHARS``. Totals by status are
read from the sizes the store keeps, but those of finished tasks (``finished_counts``), which take one pass over the
remembered ones (``max_remembered``: the routes recount them at most every 10 s); a page of one status passes over
the tasks of its place up to its offset, and builds only its own items.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

from ..store import AttemptAwareDataStore
from ..store.records import Attempt, AttemptOutcome, ClaimedTask, FinishedTask

MAX_LIMIT = 500
"""The most items one page holds (a request asking for more, or for all with ``limit=-1``, gets this many)."""
MAX_INPUT_CHARS = 2000
"""A task input longer than this, as JSON, is shown cut (a page stays small whatever the inputs)."""

RolloutStatus = Literal["queuing", "running", "requeuing", "succeeded", "failed", "cancelled"]
ROLLOUT_STATUSES: tuple[RolloutStatus, ...] = ("queuing", "running", "requeuing", "succeeded", "failed", "cancelled")
"""agentlightning's rollout statuses a legacy task can be in (``preparing`` is never used: a claim runs at once)."""

_ATTEMPT_STATUS: dict[AttemptOutcome, str] = {
    "in_flight": "running",
    "completed": "succeeded",
    "failed": "failed",
    "timed_out": "timeout",
    "unresponsive": "unresponsive",
    "superseded": "failed",
    "cancelled": "failed",
    "released": "failed",
}
"""agentlightning's attempt status for each outcome; the outcome itself is in the attempt's ``metadata``."""


def page(items: Iterable[dict[str, Any]], total: int, limit: int, offset: int) -> dict[str, Any]:
    """agentlightning's ``PaginatedResult``: ``{items, limit, offset, total}``."""
    return {"items": list(items), "limit": limit, "offset": offset, "total": total}


def attempt_item(rollout_id: str, sequence: int, attempt: Attempt) -> dict[str, Any]:
    """A claim as agentlightning's ``Attempt``; how it ended, as this server says it, in ``metadata``."""
    return {
        "rollout_id": rollout_id,
        "attempt_id": attempt.attempt_id,
        "sequence_id": sequence,
        "start_time": attempt.claimed_at,
        "end_time": attempt.ended_at,
        "status": _ATTEMPT_STATUS[attempt.outcome],
        "worker_id": attempt.worker,
        "last_heartbeat_time": attempt.last_heartbeat_at,
        "metadata": {
            "outcome": attempt.outcome,
            "note": attempt.note,
            "failure": attempt.failure,
            "release_reason": attempt.release_reason,
            "leased": attempt.leased,
            "kept_past_timeout": attempt.kept_past_timeout,
        },
    }


def _input(value: Any) -> Any:
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return value if len(text) <= MAX_INPUT_CHARS else text[:MAX_INPUT_CHARS] + f"... ({len(text)} chars)"


def _finished_status(finished: FinishedTask) -> RolloutStatus:
    if finished.cancelled:
        return "cancelled"
    return "failed" if finished.stored is None else "succeeded"


def _rollout(
    rollout_id: str,
    status: RolloutStatus,
    attempts: Sequence[Attempt],
    task: Any = None,
) -> dict[str, Any]:
    first = attempts[0].claimed_at if attempts else None
    ended = attempts[-1].ended_at if attempts and status in ("succeeded", "failed", "cancelled") else None
    item: dict[str, Any] = {
        "rollout_id": rollout_id,
        "input": None if task is None else _input(getattr(task, "input", None)),
        "start_time": getattr(task, "create_time", None) or first or 0.0,
        "end_time": ended,
        "mode": getattr(task, "mode", None),
        "resources_id": getattr(task, "resources_id", None),
        "status": status,
        "config": {"max_attempts": 1, "retry_condition": []},
        "metadata": {"claims": len(attempts)},
    }
    if attempts:
        item["attempt"] = attempt_item(rollout_id, len(attempts), attempts[-1])
    return item


def finished_counts(store: AttemptAwareDataStore) -> dict[RolloutStatus, int]:
    """How many remembered finished tasks are ``succeeded``, ``failed``, ``cancelled``: one pass over them."""
    counts: dict[RolloutStatus, int] = {"succeeded": 0, "failed": 0, "cancelled": 0}
    for _, record in store.book.finished.items():
        counts[_finished_status(record)] += 1
    return counts


def status_counts(
    store: AttemptAwareDataStore, finished: Mapping[RolloutStatus, int] | None = None
) -> dict[RolloutStatus, int]:
    """How many tasks are in each status: the live ones from the store's sizes, the finished ones from ``finished``
    (``finished_counts``, which it calls when not given)."""
    book = store.book
    running = len(book.in_flight)
    requeuing = len(book.claimed) - running
    ended = finished_counts(store) if finished is None else finished
    return {
        "queuing": len(book.queue) - requeuing,
        "running": running,
        "requeuing": requeuing,
        "succeeded": ended.get("succeeded", 0),
        "failed": ended.get("failed", 0),
        "cancelled": ended.get("cancelled", 0),
    }


Found = tuple[str, RolloutStatus, Sequence[Attempt], Any]
"""A task as found: rollout id, status, attempts, the task itself (None once finished)."""


def _of_status(store: AttemptAwareDataStore, status: RolloutStatus, newest_first: bool) -> Iterator[Found]:
    """The tasks of one status, oldest first (queue order, claim order, finishing order) or newest first; cheap per
    task skipped (a page's items are built from what this yields)."""
    book = store.book
    if status == "queuing":
        queue = book.queue
        ids: Iterable[str] = reversed(list(queue)) if newest_first else queue
        claimed = book.claimed
        for rollout_id in ids:
            if rollout_id not in claimed:
                yield rollout_id, status, (), queue.peek(rollout_id)
    elif status in ("running", "requeuing"):
        live = status == "running"
        records: Iterable[ClaimedTask] = reversed(book.claimed.values()) if newest_first else book.claimed.values()
        for record in records:
            if record.live == live:
                yield record.rollout_id, status, record.attempts, record.task
    else:
        items = book.finished.newest_first() if newest_first else book.finished.items()
        for rollout_id, finished in items:
            if _finished_status(finished) == status:
                yield rollout_id, status, finished.attempts, None


def rollouts(
    store: AttemptAwareDataStore,
    statuses: Sequence[RolloutStatus],
    limit: int,
    offset: int,
    newest_first: bool = False,
    finished: Mapping[RolloutStatus, int] | None = None,
) -> dict[str, Any]:
    """A page of the tasks in ``statuses`` (all by default), status by status in ``ROLLOUT_STATUSES``' order;
    ``finished``: as ``status_counts`` takes it."""
    chosen: list[RolloutStatus] = [status for status in ROLLOUT_STATUSES if not statuses or status in statuses]
    counts = status_counts(store, finished)
    total = sum(counts[status] for status in chosen)
    skip, wanted, found = offset, limit, list[Found]()
    for status in chosen:
        if wanted <= 0:
            break
        if skip >= counts[status]:
            skip -= counts[status]
            continue
        found.extend(itertools.islice(_of_status(store, status, newest_first), skip, skip + wanted))
        wanted, skip = limit - len(found), 0
    return page((_rollout(*task) for task in found), total, limit, offset)


def find(store: AttemptAwareDataStore, rollout_id: str) -> tuple[RolloutStatus, Sequence[Attempt], Any] | None:
    """A task's status, its attempts and (while not finished) the task itself; None if unknown or forgotten."""
    book = store.book
    claimed = book.claimed.get(rollout_id)
    if claimed is not None:
        return ("running" if claimed.live else "requeuing"), claimed.attempts, claimed.task
    finished = book.finished.get(rollout_id)
    if finished is not None:
        return _finished_status(finished), finished.attempts, None
    if rollout_id in book.queue:
        return "queuing", (), book.queue.peek(rollout_id)
    return None


def rollout(store: AttemptAwareDataStore, rollout_id: str) -> dict[str, Any] | None:
    """One task as a rollout; None if unknown or forgotten."""
    found = find(store, rollout_id)
    return None if found is None else _rollout(rollout_id, *found)


def attempts(store: AttemptAwareDataStore, rollout_id: str, limit: int, offset: int) -> dict[str, Any] | None:
    """A page of a task's claims, as agentlightning's attempts, by claim sequence; None if unknown or forgotten."""
    found = find(store, rollout_id)
    if found is None:
        return None
    claims = found[1]
    chosen = itertools.islice(enumerate(claims, 1), offset, offset + limit)
    items = (attempt_item(rollout_id, sequence, attempt) for sequence, attempt in chosen)
    return page(items, len(claims), limit, offset)
