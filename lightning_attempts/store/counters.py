"""The store's counters: one per outcome worth knowing, and drops by reason."""

from __future__ import annotations

from typing import Any

from .table import DropReason

COUNTERS: dict[str, str] = {
    "claims": "Tasks handed out (each claim is an attempt).",
    "claims_undelivered": "Claims given back because their long poll's client had gone.",
    "requeues": "Claims requeued after a timeout or silence.",
    "requeues_unresponsive": "Claims requeued because their worker went silent.",
    "max_claims_exceeded": "Tasks completed empty after max_claims claims.",
    "task_budget_exceeded": "Tasks completed empty when worked on for task_budget task timeouts unfinished.",
    "given_up": "Tasks completed empty, marked, for either reason: max_claims or task_budget.",
    "claims_kept_past_timeout": "Claims kept past task_timeout_seconds while their workers heartbeat (task_budget).",
    "accepted": "Results stored.",
    "accepted_unverified": "Results stored from old clients without an attempt id.",
    "accepted_unverified_reclaimed": "Results stored without an attempt id for a task claimed more than once.",
    "salvaged": "Late results stored under stale_policy='salvage'.",
    "duplicates": "Retries of an already stored attempt.",
    "refused": "Results refused for lack of an attempt id.",
    "heartbeats": "Heartbeats of current attempts.",
    "heartbeats_stale": "Heartbeats of attempts that no longer hold their claim.",
    "unauthorized": "Requests refused (401) for lack of the server's API key.",
    "failed_attempts": "Failed results posted by live attempts (counted while retry_failed is set).",
    "failure_retries": "Tasks requeued after a failed result (retry_failed).",
    "failed_stored": "Failed results stored, marked failed, after retry_failed or max_claims ran out.",
    "releases": "Claims given back by their worker (POST /release).",
    "releases_unrun": "Claims released unrun (no_resources, skipped): not counted toward max_claims.",
    "releases_stale": "Releases of attempts that no longer held their claim.",
}
"""Every counter, by name (as in ``stats()`` and, prefixed, in Prometheus), with what it counts."""


class Counters:
    """Counts since the store was made: ``COUNTERS``, and results dropped by reason."""

    __slots__ = ("_counts", "_drops")

    def __init__(self) -> None:
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._drops = dict.fromkeys((reason.value for reason in DropReason), 0)

    def add(self, name: str) -> None:
        self._counts[name] += 1

    def dropped(self, reason: DropReason) -> None:
        self._drops[reason.value] += 1

    def snapshot(self) -> dict[str, Any]:
        """Every counter, then ``dropped`` (by reason) and ``dropped_total``."""
        dropped = dict(self._drops)
        return {**self._counts, "dropped": dropped, "dropped_total": sum(dropped.values())}
