"""AttemptAwareDataStore: upstream's in-memory store, with every claim an attempt, as a synchronous state machine."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from typing_extensions import Unpack

from ..compat import LegacyRollout, ServerDataStore, Task
from ..models import AttemptTask, ReleaseReason
from ..options import DEFAULTS, OptionArguments, Options, option_attributes
from .answers import Lease, ReleaseAnswer, Submission
from .counters import Counters
from .given_back import UNRUN, GivenBack
from .queue import Hook
from .records import ClaimedTask
from .stranded import Heard, Stranded, count_stranded
from .tasks import TaskBook
from .transitions import Transitions

logger = logging.getLogger("lightning_attempts.store")


@option_attributes(hidden=("api_key", "clock"))
class AttemptAwareDataStore(ServerDataStore):
    """Upstream's ``ServerDataStore`` in which each claim is an attempt.

    A claim hands out the task with a fresh UUID4 ``attempt_id`` and the next
    ``claim_sequence_id``; a result is stored only if its attempt is valid under the
    ``stale_policy`` (by README's outcome table, ``table.RULES``), and at most one
    result is stored per task. This class makes claims, takes their heartbeats and
    answers upstream's API; ``Transitions`` ends attempts, by their results or without
    one (expired, released, cancelled, given up), and the ``TaskBook`` keeps where each
    task is, with its invariants (each task in exactly one place; a finished task never
    claimable again; the claim index holds exactly the live claims).

    Concurrency: every state change is a plain synchronous method with no ``await``
    inside, run on the server's event loop, so no two of them interleave and no
    lock is needed; the ``async`` methods upstream's API requires only wrap them.
    Waiting belongs to the server, which sets three hooks; each only schedules work
    or resolves futures, and never calls back into the store:

    - ``on_claimable()``: a task was queued or requeued (through ``TaskQueue.put_nowait``);
    - ``on_deadline()``: ``next_deadline()`` moved earlier: a claim was made while none was
      in flight, or a claim was leased while no other was;
    - ``on_finished(rollout_id)``: a task's result was stored (``_complete``) or it
      was cancelled.
    """

    def __init__(self, options: Options | None = None, /, **overrides: Unpack[OptionArguments]) -> None:
        """A store with ``options`` (default: every option at its default), changed by ``overrides``, e.g.
        ``AttemptAwareDataStore(task_timeout_seconds=60, max_claims=3)``; ``OptionError`` for a bad value."""
        super().__init__()
        options = options or DEFAULTS
        self.options = options.replace(**overrides) if overrides else options
        """The options this store works with (the server's own, when it built the store)."""
        self._clock = self.options.clock
        options = self.options
        budget = None if options.task_budget is None else options.task_budget * options.task_timeout_seconds
        self._book = TaskBook(options.unresponsive_seconds, options.max_remembered, self._clock, budget)
        self._task_queue = self._book.queue  # pyright: ignore[reportAttributeAccessIssue] # where upstream's add_task puts
        self._counters = Counters()
        self._transitions = Transitions(self._book, self._counters, self._complete, self.options)
        self._given_back = GivenBack(self._clock)
        self._longest_kept = 0.0  # the oldest age seen of a claim kept past its task timeout
        self._heard = Heard(max(options.max_remembered, 1024))  # ended claims whose workers came back since
        self.on_deadline: Hook | None = None
        self.on_finished: Callable[[str], None] | None = None

    @property
    def on_claimable(self) -> Hook | None:
        """Called (with no argument) whenever a task becomes claimable."""
        return self._book.queue.on_put

    @on_claimable.setter
    def on_claimable(self, hook: Hook | None) -> None:
        self._book.queue.on_put = hook

    # -- claims ---------------------------------------------------------------

    def claim(self, *, leased: bool = False, worker: str | None = None) -> AttemptTask | None:
        """Hand out the next queued task as a new attempt, or ``None`` if none waits.

        ``leased``: the worker says it heartbeats its claims, so the claim is leased from
        now, as its first heartbeat would lease it: silence longer than
        ``unresponsive_seconds`` then ends it. A claim that is not leased ends only at
        ``task_timeout_seconds``: a worker that never heartbeats (an old client) is never
        requeued for its silence. ``worker``: who claims (its history and the dashboard show it).
        """
        now, before = self._clock(), self.next_deadline()
        claimed = self._book.claim(now, now + self.options.task_timeout_seconds, leased=leased, worker=worker)
        if claimed is None:
            return None
        self._counters.add("claims")
        sequence = len(claimed.attempts)
        if sequence > 1:
            logger.info("Task %s re-claimed: attempt %s (claim %d)", claimed.rollout_id, claimed.latest, sequence)
        self._deadline_moved(before)
        return claimed.handed_out(self.options.unresponsive_seconds)

    def give_back(self, rollout_id: str, attempt_id: str) -> bool:
        """Undo a claim that never reached its poller (its connection closed first).

        The attempt is forgotten, as if never issued, and the task goes back to the
        front of the queue. Nothing happens (False) unless ``attempt_id`` still holds
        the live claim. Counted as ``claims_undelivered``.
        """
        claimed = self._book.claimed.get(rollout_id)
        if claimed is None or claimed.current != attempt_id:
            return False
        self._counters.add("claims_undelivered")
        logger.info("Task %s back in the queue: its poller left before attempt %s reached it", rollout_id, attempt_id)
        self._book.unclaim(claimed)
        self._claims_ended()
        return True

    def get_processing_tasks(self) -> dict[str, Task]:
        """Upstream's API: the live claims, as handed out."""
        return {
            claimed.rollout_id: claimed.handed_out(self.options.unresponsive_seconds)
            for claimed in self._book.in_flight
        }

    async def get_next_task(self) -> Task | None:
        """Upstream's API for ``claim``."""
        return self.claim()

    # -- expiry ---------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When the next claim expires (timeout or silence) or task runs out of budget, on the store's clock;
        None: nothing will. O(1)."""
        claims, budget = self._book.in_flight.next_deadline(), self._book.budget_deadline()
        return claims if budget is None else budget if claims is None else min(claims, budget)

    def _deadline_moved(self, before: float | None) -> None:
        """Call ``on_deadline`` if the next deadline is now earlier than ``before`` (a new claim or lease)."""
        after = self.next_deadline()
        if after is not None and (before is None or after < before) and self.on_deadline is not None:
            self.on_deadline()

    def _claims_ended(self) -> None:
        """Claims ended: if none is in flight now, waiting tasks' budgets run (``budget``): the timer is told."""
        budget = self._book.budget
        if budget is not None and budget.waiting and not self._book.in_flight and self.on_deadline is not None:
            self.on_deadline()

    def requeue_expired(self) -> int:
        """Requeue every claim past its timeout or silent too long, give up tasks past their budget; how many."""
        if not self._book.claimed:
            return 0
        return self._transitions.expire(self._clock())

    def forgive_silence(self, seconds: float) -> None:
        """Count ``seconds`` of every leased claim's silence as heard: the server itself could not listen (a stalled
        event loop), so heartbeats sent meanwhile wait unread, and a live worker must not lose its claim for that."""
        if seconds > 0:
            self._book.in_flight.forgive(seconds)

    def _complete(self, rollout_id: str, rollout: LegacyRollout) -> None:
        """Store a task's one result (every stored result goes through here)."""
        self._completed_rollouts[rollout_id] = rollout
        if self.on_finished is not None:
            self.on_finished(rollout_id)

    async def requeue_task(self, task: Task) -> None:
        """Requeue ``task``'s claim now, if it is still the live one (upstream's API)."""
        claimed = self._book.claimed.get(task.rollout_id)
        attempt_id = getattr(task, "attempt_id", None)
        if claimed is not None and claimed.live and attempt_id in (None, claimed.current):
            self._transitions.end(claimed, "timed_out")

    # -- leases ---------------------------------------------------------------

    def heartbeat(self, rollout_id: str, attempt_id: str) -> Lease:
        """Extend the claim of ``attempt_id`` if it still holds it; say whether it does.

        A heartbeat leases the claim if it was not (its worker heartbeats, after all) and
        restarts the ``unresponsive_seconds`` window. ``task_timeout_seconds`` stays the hard
        limit on a claim's age, but with a ``task_budget`` a leased claim is kept past it while
        its worker heartbeats, until the task's budget runs out. A stale heartbeat changes nothing.
        """
        claimed = self._book.claimed.get(rollout_id)
        if claimed is None or claimed.current != attempt_id:
            self._counters.add("heartbeats_stale")
            reason = self._transitions.reason_against(rollout_id, attempt_id)
            return Lease(rollout_id, attempt_id, reason, outcome=self._book.outcome_of(rollout_id, attempt_id))
        now, before = self._clock(), self.next_deadline()
        attempt = claimed.attempts[-1]
        attempt.seen, attempt.last_heartbeat_at, attempt.leased = now, time.time(), True
        self._book.in_flight.heard_from(claimed)
        self._deadline_moved(before)
        self._counters.add("heartbeats")
        self._note_kept(claimed, now)
        budget, deadline = self._book.budget, claimed.deadline
        if budget is not None and self._book.in_flight.kept(claimed):
            deadline = now + budget.seconds - budget.spent(claimed, now)
        return Lease(
            rollout_id, attempt_id, None, len(claimed.attempts), self.options.unresponsive_seconds, deadline - now
        )

    def _note_kept(self, claimed: ClaimedTask, now: float) -> None:
        """Mark and count the live claim once it is seen kept past its task timeout (leased, under a ``task_budget``),
        and note its age: a slow task the batch waits for, which no requeue shows."""
        if now > claimed.deadline and self._book.in_flight.kept(claimed):
            self._longest_kept = max(self._longest_kept, now - claimed.deadline + self.options.task_timeout_seconds)
            attempt = claimed.attempts[-1]
            if not attempt.kept_past_timeout:
                attempt.kept_past_timeout = True
                self._counters.add("claims_kept_past_timeout")

    def release(
        self, rollout_id: str, attempt_id: str, reason: ReleaseReason | None = None, worker: str | None = None
    ) -> ReleaseAnswer:
        """Give back the claim of ``attempt_id`` if it holds it: the task is requeued at once.

        The attempt ends ``released`` and a later result of it is dropped (reason
        ``released``); it never counts toward ``retry_failed``. ``reason`` is why the worker
        gave it back, ``worker`` who it is (for the log). A claim given back unrun
        (``no_resources``, ``skipped``: ``given_back.UNRUN``) says nothing of the task: it does
        not count toward ``max_claims``, and ``given_back`` tells of the worker. Any other release
        (``interrupted``, ``closing``, or no reason) is a claim like any other for ``max_claims``:
        releasing the last allowed one completes the task empty. An attempt that no longer holds
        the claim changes nothing.
        """
        claimed = self._book.claimed.get(rollout_id)
        if claimed is None or claimed.current != attempt_id:
            self._counters.add("releases_stale")
            self._heard.add(attempt_id)
            stale = self._transitions.reason_against(rollout_id, attempt_id)
            return ReleaseAnswer(rollout_id, attempt_id, stale, outcome=self._book.outcome_of(rollout_id, attempt_id))
        self._note_kept(claimed, self._clock())
        requeued = self._transitions.end(claimed, "released", reason)
        if reason is not None and reason in UNRUN:
            has_resources = self._latest_resources_id is not None
            queued = len(self._book.queue)
            self._given_back.unrun(worker or "unnamed", reason, rollout_id, has_resources=has_resources, queued=queued)
        self._claims_ended()
        return ReleaseAnswer(rollout_id, attempt_id, None, len(claimed.attempts), gave_up=not requeued)

    # -- submissions ----------------------------------------------------------

    def submit(self, rollout: LegacyRollout, attempt_id: str | None = None, *, failed: bool = False) -> Submission:
        """Store ``rollout`` if ``attempt_id`` may complete its task; say what happened.

        The outcome is README's table (``table.RULES``), looked up by the task's state,
        what ``attempt_id`` is to it, whether the result is a failure ``retry_failed``
        may retry, and whether attempt ids are required. A drop or refusal changes
        nothing but the counters.

        ``failed`` says the result is a failure (the server's ``is_failed_result``).
        With ``retry_failed`` set, a failed result of the live attempt ends it
        ``failed`` and requeues the task (``retrying``) while the task has had fewer
        than ``retry_failed`` failed attempts and fewer than ``max_claims`` claims;
        after that it is stored, marked failed in its metadata. With ``retry_failed=0``
        ``failed`` is ignored: the result is stored as upstream does.
        """
        claimed = self._book.claimed.get(rollout.rollout_id)
        if claimed is not None and claimed.live and self._book.in_flight.kept(claimed):
            self._note_kept(claimed, self._clock())
        submission = self._transitions.submit(rollout, attempt_id, failed=failed)
        if submission.status in ("ok", "retrying"):  # a worker ran the task
            self._given_back.result_stored()
        self._claims_ended()
        if submission.status == "dropped" or attempt_id is None:  # a worker back from a claim that may have ended
            self._heard.add(attempt_id or rollout.rollout_id)
        return submission

    async def store_rollout(self, rollout: LegacyRollout) -> Submission:  # pyright: ignore[reportIncompatibleMethodOverride]
        """Upstream's API for ``submit``, reading the attempt id from the rollout itself."""
        return self.submit(rollout, getattr(rollout, "attempt_id", None))

    def liveness(self, rollout_id: str, attempt_id: str) -> str | None:
        """Whether the attempt is live: None when an ordinary result of it would be stored now, else why not.

        Live is what ``submit`` does: the attempt holding the live claim, or, under
        ``stale_policy="salvage"``, an earlier attempt of a task not finished. Otherwise the
        reason its result would be dropped for (``superseded``, ``cancelled``, ``released``,
        ``unknown_attempt``, ...), or ``completed`` for the attempt whose result is stored.
        verl's daemon refuses the LLM calls of attempts that are not live. Changes nothing.
        """
        return self._transitions.liveness(rollout_id, attempt_id)

    def stored_attempt(self, rollout_id: str) -> str | None:
        """The attempt credited with the task's stored result, while the task is remembered; else None (not
        finished, cancelled, given up, or completed by a result without an attempt id)."""
        finished = self._book.finished.get(rollout_id)
        return None if finished is None else finished.stored

    # -- cancellation ---------------------------------------------------------

    def cancel(self, rollout_ids: Iterable[str] | None = None) -> list[str]:
        """Cancel the given tasks (default: every queued or claimed one); return those cancelled.

        Later results of a cancelled task are dropped with reason ``cancelled``.
        Finished and unknown ids are skipped.
        """
        chosen = self._book.pending() if rollout_ids is None else rollout_ids
        cancelled = self._transitions.cancel(chosen)
        self._claims_ended()
        if cancelled:
            logger.info("Cancelled %d pending tasks", len(cancelled))
            if self.on_finished is not None:
                for rollout_id in cancelled:
                    self.on_finished(rollout_id)
        return cancelled

    def count_unauthorized(self) -> None:
        """Count a request the server refused for lack of its API key (it changed nothing else)."""
        self._counters.add("unauthorized")

    # -- completion -----------------------------------------------------------

    def queued(self) -> int:
        """How many tasks wait in the queue for a claim."""
        return len(self._book.queue)

    def in_flight(self) -> int:
        """How many claims are in flight: handed out, and neither ended nor completed."""
        return len(self._book.in_flight)

    def stranded(self) -> Stranded:
        """Claims ended without their worker's word (timed out, silent, superseded, given up, cancelled) whose worker
        has sent nothing for them since (no result, no release): workers still inside their agents, or dead.

        Scans the claimed and remembered tasks: for occasional reads (the server's fleet watch), not per request.
        """
        return count_stranded(self._book.claimed.values(), self._book.finished.items(), self._heard)

    def unfinished(self, rollout_ids: Iterable[str]) -> set[str]:
        """Those of ``rollout_ids`` still queued or claimed (neither completed nor cancelled).

        Raises ``ValueError`` for an id this store neither holds nor remembers, as
        LightningStore's ``wait_for_rollouts`` does.
        """
        pending: set[str] = set()
        for rollout_id in rollout_ids:
            if self._book.is_pending(rollout_id):
                pending.add(rollout_id)
            elif rollout_id not in self._completed_rollouts and rollout_id not in self._book.finished:
                raise ValueError(f"Rollout ID '{rollout_id}' is neither live, stored nor remembered.")
        return pending

    def stored(self, rollout_ids: Iterable[str]) -> list[LegacyRollout]:
        """The stored, not yet retrieved results among ``rollout_ids`` (left in place)."""
        completed = self._completed_rollouts
        return [completed[rollout_id] for rollout_id in dict.fromkeys(rollout_ids) if rollout_id in completed]

    # -- inspection -----------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters by outcome and drop reason, and the sizes of the live state."""
        return {
            **self._counters.snapshot(),
            "claims_in_flight": len(self._book.in_flight),
            "queued": len(self._book.queue),
            "completed_unretrieved": len(self._completed_rollouts),
            "finished_remembered": len(self._book.finished),
            **self._given_back.stats(),
            "longest_kept_claim_seconds": self._longest_kept,
        }

    @property
    def book(self) -> TaskBook:
        """Where every task is, for readers (the dashboard): read it on the server's loop, never change it."""
        return self._book

    def resource_ids(self) -> tuple[list[str], str | None]:
        """The ids of the resource versions set, oldest first, and the latest one's (None: none set)."""
        versions: dict[str, object] = getattr(self, "_resource_versions", {})
        return list(versions), self._latest_resources_id

    def given_back_by_worker(self) -> dict[str, int]:
        """How many claims each worker gave back without running them (the most recent worker last)."""
        return self._given_back.by_worker()

    def history(self, rollout_id: str) -> list[dict[str, Any]] | None:
        """Each claim of a task (id, times, outcome) while the task is live or remembered; else None."""
        return self._book.history(rollout_id)
