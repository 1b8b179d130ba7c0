"""What a verl training step trains on: a step with nothing to train on fails here, saying why.

Upstream's ``get_train_data_batch`` skips each rollout without triplets and, when none has
any, fails inside verl's tensor code ("cannot reshape tensor of 0 elements", agentlightning
issues #50 and #442). ``no_training_data`` tells that step apart first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import LightningAttemptsError

GIVEN_UP = ("max_claims_exceeded", "task_budget_exceeded")
"""The ``metadata["lightning_attempts"]["outcome"]`` of a task the server gave up."""


def no_training_data(rollouts: Iterable[Any]) -> None:
    """Raise ``NoTrainingData`` when not one of a training step's ``rollouts`` carries triplets.

    verl would otherwise fail deep inside its tensor code ("cannot reshape tensor of 0 elements",
    agentlightning issues #50 and #442). The message counts the tasks given up, failed or empty,
    names one, and says what to check.
    """
    rollouts = list(rollouts)
    if not rollouts or any(rollout.triplets for rollout in rollouts):
        return
    kinds: dict[str, list[str]] = {"given up": [], "failed": [], "empty": []}
    for rollout in rollouts:
        kinds[_kind(rollout)].append(rollout.rollout_id)
    counts = ", ".join(f"{len(ids)} {kind}" for kind, ids in kinds.items())
    example = next(ids[0] for ids in kinds.values() if ids)
    raise NoTrainingData(
        f"No rollout of this training step carries triplets, so there is nothing to train on: {len(rollouts)} "
        f"tasks, {counts} (given up: the server ran out of claims or time for it, see its 'Giving up on task' "
        f"warnings; failed: the agent raised, no reward; empty: a reward but no triplets), e.g. rollout {example}. "
        "Check that the agent's LLM calls reach the tracer (agentlightning's 'No triplets found' warnings) and "
        "what the server's log says of the given-up tasks."
    )


class NoTrainingData(LightningAttemptsError, RuntimeError):
    """A training step in which not one rollout carries triplets."""


def _kind(rollout: Any) -> str:
    """Why a rollout carries no triplets, as far as its content says."""
    metadata: dict[str, Any] = rollout.metadata or {}
    marked: dict[str, Any] = metadata.get("lightning_attempts") or {}
    if marked.get("outcome") in GIVEN_UP:
        return "given up"
    return "failed" if marked.get("outcome") == "failed" or rollout.final_reward is None else "empty"
