"""The claim book: the claims a client holds, and which one a submission belongs to.

The upstream runner builds the rollout it posts from ``task.rollout_id`` alone, so the
attempt id the server handed out is lost between poll and post. The book remembers each
claim, and a submission carries the attempt id chosen in order:

1. the rollout's own ``attempt_id`` (an ``AttemptRollout``);
2. ``rollout.task.attempt_id`` (the runner echoes the task in some paths);
3. the claim made in the same thread or asyncio task (a context variable: the runner
   polls and posts from the same one);
4. the only open claim of that rollout id held by this client;
5. else none: an old-style submission, which the server still accepts while the claim lives.

The same context variable tells a skipped claim: the runner polls again from the same
thread or asyncio task without having submitted that context's last claim (as it does
when it cannot fetch the task's resources). A claim leaves the book when it is submitted
or released; one a heartbeat learnt is lost stays until then, but is no longer current.
"""

from __future__ import annotations

import contextvars
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..models import AttemptTask

MAX_OPEN_CLAIMS = 10_000
"""Claims remembered without a submission (the runner skips tasks whose resources it cannot fetch)."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A task this client claimed: the attempt its result must be submitted with."""

    rollout_id: str
    attempt_id: str
    claim_sequence_id: int | None = None
    lease_seconds: float | None = None
    llm_proxy_port: int | None = None
    """The port of the server's attempt-aware LLM proxy, if it named one (``AttemptTask.llm_proxy_port``)."""


# The last claim made in this thread or asyncio task, by client (so two clients never mix).
_CURRENT_CLAIM: contextvars.ContextVar[tuple[int, Claim] | None] = contextvars.ContextVar(
    "lightning_attempts_claim", default=None
)


class ClaimBook:
    """The claims one client made in this process and has not submitted or released yet."""

    def __init__(self, owner: object) -> None:
        self._owner = id(owner)  # the client, whose current claims are this book's, across a fork too
        self._lock = threading.Lock()
        self._open: OrderedDict[str, Claim] = OrderedDict()  # attempt id -> claim
        self._stale: set[str] = set()
        self._without_resources: set[str] = set()  # open claims whose resources could not be fetched

    def add(self, task: AttemptTask) -> Claim | None:
        """Remember the claim ``task`` was handed out by, as this thread's or task's current one.

        None for a task without an attempt (an unpatched server's): there is nothing to carry.
        """
        if task.attempt_id is None:
            return None
        claim = Claim(task.rollout_id, task.attempt_id, task.claim_sequence_id, task.lease_seconds, task.llm_proxy_port)
        with self._lock:
            self._open[claim.attempt_id] = claim
            while len(self._open) > MAX_OPEN_CLAIMS:
                self._without_resources.discard(self._open.popitem(last=False)[0])
        _CURRENT_CLAIM.set((self._owner, claim))
        return claim

    def current(self) -> Claim | None:
        """The last claim made in this thread or asyncio task, if it is still open (not submitted or released).

        The runner fetches a task's resources right after claiming it, in the same thread or task;
        when it polls again from there without having submitted, that claim was skipped.
        """
        current = _CURRENT_CLAIM.get()
        if current is None or current[0] != self._owner:
            return None
        with self._lock:
            return current[1] if current[1].attempt_id in self._open else None

    def attempt_id_for(self, rollout: Any) -> str | None:
        """The attempt id a submission of ``rollout`` carries (see the module docstring)."""
        own = getattr(rollout, "attempt_id", None)
        if own:
            return own
        task_attempt = getattr(getattr(rollout, "task", None), "attempt_id", None)
        if task_attempt:
            return task_attempt
        rollout_id = rollout.rollout_id
        current = _CURRENT_CLAIM.get()
        if current is not None and current[0] == self._owner and current[1].rollout_id == rollout_id:
            return current[1].attempt_id
        with self._lock:
            candidates = [claim.attempt_id for claim in self._open.values() if claim.rollout_id == rollout_id]
        return candidates[0] if len(candidates) == 1 else None

    def open_claims(self) -> list[Claim]:
        """Claims made and not submitted yet."""
        with self._lock:
            return list(self._open.values())

    def is_current(self, attempt_id: str) -> bool:
        """Whether the claim is held: not submitted, and no heartbeat was told it is lost."""
        with self._lock:
            return attempt_id in self._open and attempt_id not in self._stale

    def claim_of(self, rollout_id: str, attempt_id: str) -> Claim:
        """The open claim of ``attempt_id``, or one made up from the two ids."""
        with self._lock:
            return self._open.get(attempt_id) or Claim(rollout_id, attempt_id)

    def forget(self, attempt_id: str | None) -> None:
        """The claim was submitted or released: it is no longer held, nor this context's current one."""
        if attempt_id is None:
            return
        with self._lock:
            self._open.pop(attempt_id, None)
            self._stale.discard(attempt_id)
            self._without_resources.discard(attempt_id)
        current = _CURRENT_CLAIM.get()
        if current is not None and current[1].attempt_id == attempt_id:
            _CURRENT_CLAIM.set(None)

    def found_no_resources(self, claim: Claim) -> None:
        """The runner's fetch of the claim's resources found none (a failed request, or none on the server)."""
        with self._lock:
            if claim.attempt_id in self._open:
                self._without_resources.add(claim.attempt_id)

    def without_resources(self, claim: Claim) -> bool:
        """Whether the runner could not fetch the claim's resources (so it skipped the claim for that)."""
        with self._lock:
            return claim.attempt_id in self._without_resources

    def lost(self, claim: Claim) -> None:
        """A heartbeat learnt that the claim is gone: it is no longer current (heartbeats stop)."""
        with self._lock:
            if claim.attempt_id in self._open:
                self._stale.add(claim.attempt_id)
