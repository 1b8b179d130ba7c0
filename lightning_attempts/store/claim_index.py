"""The claims in flight, in the orders that expire them, so that requeueing looks only at their fronts."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Literal

from .records import ClaimedTask

Expiry = Literal["timed_out", "unresponsive"]
"""Why a live claim expired: past ``task_timeout_seconds``, or silent longer than ``unresponsive_seconds``."""


class ClaimIndex:
    """Live claims in deadline order and, with a silence limit, the leased ones in order of last word.

    Claims are added in claim order, which a fixed ``task_timeout_seconds`` makes deadline
    order. A leased claim (its worker heartbeats) is also kept in order of last word from
    its worker: it enters at the back when leased, and each heartbeat moves it back again.
    With ``keep_leased`` (a task budget), a leased claim leaves the deadline order: its worker
    keeps it past the task timeout while it heartbeats, and only silence (or the task's
    budget, which the ``TaskBook`` watches) ends it. So the next claim to expire is at the
    front of one of the two, and ``next_deadline`` and ``next_expired`` cost O(1) whatever
    the number of claims in flight.
    """

    def __init__(self, silence_limit: float | None, *, keep_leased: bool = False) -> None:
        self.silence_limit = silence_limit
        """Seconds without a word after which a claim expires (``unresponsive_seconds``); None: never."""
        self.keep_leased = keep_leased and silence_limit is not None
        """Whether a leased claim outlives the task timeout (it needs leases: a dead worker must still lose it)."""
        self._live: dict[str, ClaimedTask] = {}
        self._by_deadline: OrderedDict[str, ClaimedTask] = OrderedDict()
        self._by_last_heard: OrderedDict[str, ClaimedTask] = OrderedDict()

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[ClaimedTask]:
        """The claims, oldest first."""
        return iter(self._live.values())

    def add(self, claimed: ClaimedTask) -> None:
        """A new live claim (its deadline is the latest of all); leased if its attempt is."""
        self._live[claimed.rollout_id] = claimed
        self._by_deadline[claimed.rollout_id] = claimed
        if claimed.attempts[-1].leased:
            self.heard_from(claimed)

    def heard_from(self, claimed: ClaimedTask) -> None:
        """The leased claim's worker has just said it is alive (a first word leases the claim)."""
        if self.silence_limit is not None:
            self._by_last_heard[claimed.rollout_id] = claimed
            self._by_last_heard.move_to_end(claimed.rollout_id)
            if self.keep_leased:
                self._by_deadline.pop(claimed.rollout_id, None)

    def kept(self, claimed: ClaimedTask) -> bool:
        """Whether the live claim is kept past the task timeout (leased, with a task budget)."""
        return self.keep_leased and claimed.rollout_id not in self._by_deadline

    def forgive(self, seconds: float) -> None:
        """Count ``seconds`` of every leased claim's silence as heard: the server, not the worker, was silent."""
        for claimed in self._by_last_heard.values():
            claimed.attempts[-1].seen += seconds

    def discard(self, rollout_id: str) -> None:
        """The claim no longer holds its task (completed, requeued, released, cancelled); fine if absent."""
        if self._live.pop(rollout_id, None) is not None:
            self._by_deadline.pop(rollout_id, None)
            self._by_last_heard.pop(rollout_id, None)

    def next_deadline(self) -> float | None:
        """When the next claim expires (timeout or silence); None: none will."""
        deadline: float | None = None
        if self._by_deadline:
            deadline = next(iter(self._by_deadline.values())).deadline
        if self.silence_limit is not None and self._by_last_heard:
            silent = next(iter(self._by_last_heard.values())).attempts[-1].seen + self.silence_limit
            deadline = silent if deadline is None else min(deadline, silent)
        return deadline

    def next_expired(self, now: float) -> tuple[ClaimedTask, Expiry] | None:
        """A claim past its deadline (``timed_out``) or silent too long (``unresponsive``) at ``now``; else None.

        Timeouts come first, in claim order, then silences, in order of last word.
        """
        if self._by_deadline:
            claimed = next(iter(self._by_deadline.values()))
            if claimed.deadline < now:
                return claimed, "timed_out"
        if self.silence_limit is not None and self._by_last_heard:
            claimed = next(iter(self._by_last_heard.values()))
            if claimed.attempts[-1].seen < now - self.silence_limit:
                return claimed, "unresponsive"
        return None
