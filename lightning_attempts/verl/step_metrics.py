"""What a verl step logs of its attempts: ``attempts/*`` (training) and ``val/attempts/*`` (validation).

Counts are the step's own: the difference of the server's ``attempt_stats()`` between the
moment the daemon set the batch up and the moment verl asked for its metrics, so a
straggler of an earlier batch dropped during this step is counted in this step. The
per-task figures come from the batch's own tasks (``attempt_history``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TRAIN_PREFIX = "attempts/"
VAL_PREFIX = "val/attempts/"

FROM_COUNTERS: dict[str, str] = {
    "claims": "claims",
    "given_up": "given_up",
    "requeues": "requeues",
    "dropped": "dropped_total",
    "retries": "failure_retries",
    "released": "releases",
    "accepted_unverified": "accepted_unverified",
}
"""Metric name: the ``attempt_stats()`` counter it is the step's difference of."""


@dataclass
class StepWindow:
    """What the daemon notes of a batch while it runs."""

    before: Mapping[str, Any]
    """``attempt_stats()`` when the batch was set up (before it was queued)."""
    queued_at: float
    """Wall-clock time (``time.time()``) when the batch began to be queued; claims carry wall-clock times."""
    queued_monotonic: float
    rollout_ids: Sequence[str] = ()
    last_result_monotonic: float | None = None
    """When the daemon's wait saw the batch's last result, if it waited."""


def step_metrics(
    window: StepWindow,
    after: Mapping[str, Any],
    histories: Iterable[Sequence[Mapping[str, Any]] | None],
    cancelled: int,
    prefix: str,
) -> dict[str, float]:
    """The step's ``attempts/*`` metrics, under ``prefix``.

    ``after``: ``attempt_stats()`` now; ``histories``: ``attempt_history()`` of each task of
    the batch (None for one the server no longer remembers); ``cancelled``: tasks of earlier
    batches the daemon cancelled before queueing this one.
    """
    metrics = {name: float(after[key] - window.before[key]) for name, key in FROM_COUNTERS.items()}
    metrics["cancelled"] = float(cancelled)
    claims = [history for history in histories if history]
    metrics["max_claims_per_task"] = float(max((len(history) for history in claims), default=0))
    if claims:
        first = min(float(history[0]["claimed_at"]) for history in claims)
        metrics["queue_to_first_claim_s"] = max(first - window.queued_at, 0.0)
    if window.last_result_monotonic is not None:
        metrics["queue_to_last_result_s"] = window.last_result_monotonic - window.queued_monotonic
    return {prefix + name: value for name, value in metrics.items()}
