"""A training step with nothing to train on fails with a clear error, without verl: ``no_training_data``."""

from __future__ import annotations

from typing import Any

import pytest

from lightning_attempts import AttemptRollout
from lightning_attempts.verl.training_data import NoTrainingData, no_training_data


def rollout(rollout_id: str, reward: float | None = 1.0, triplets: Any = None, outcome: str | None = None) -> Any:
    metadata = {"lightning_attempts": {"outcome": outcome, "claims": 8}} if outcome else {}
    return AttemptRollout(rollout_id=rollout_id, final_reward=reward, triplets=triplets, metadata=metadata)


def test_a_step_without_a_single_triplet_says_how_many_tasks_gave_up_failed_or_came_back_empty() -> None:
    rollouts = [
        rollout("r-budget", None, outcome="task_budget_exceeded"),
        rollout("r-claims", None, outcome="max_claims_exceeded"),
        rollout("r-raised", None),
        rollout("r-marked", 0.0, outcome="failed"),
        rollout("r-empty", 1.0, triplets=[]),
    ]
    with pytest.raises(NoTrainingData) as raised:
        no_training_data(rollouts)
    message = str(raised.value)
    assert "5 tasks, 2 given up, 2 failed, 1 empty" in message
    assert "e.g. rollout r-budget" in message and "tracer" in message
    assert isinstance(raised.value, RuntimeError)


def test_one_rollout_with_triplets_is_enough_and_an_empty_step_is_left_to_verl() -> None:
    triplet = {"prompt": {"token_ids": [1]}, "response": {"token_ids": [2]}, "reward": 1.0}
    no_training_data([rollout("r1", None, outcome="task_budget_exceeded"), rollout("r2", triplets=[triplet])])
    no_training_data([])
