"""A training step with nothing to train on fails with a clear error, without verl: ``no_training_data``."""

from __future__ import annotations

from array import array
from typing import Any

import pytest

from lightning_attempts import AttemptRollout
from lightning_attempts.llm_proxy import CallRecord
from lightning_attempts.llm_proxy.tokens import Tokens
from lightning_attempts.verl.training_data import (
    FROM_PROXY,
    NoTrainingData,
    fill_from_calls,
    no_training_data,
    without_triplets,
)


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


def call(prompt: list[int] | None, *responses: list[int], status: int = 200) -> CallRecord:
    tokens = Tokens(
        array("i", prompt) if prompt is not None else None, {i: array("i", r) for i, r in enumerate(responses)}
    )
    return CallRecord.of("POST", "/v1/chat/completions", status, False, "127.0.0.1:8000", tokens)


def test_results_with_a_reward_and_no_triplets_are_filled_from_their_attempts_calls_and_client_triplets_win() -> None:
    triplet = {"prompt": {"token_ids": [1]}, "response": {"token_ids": [2]}, "reward": 1.0}
    rollouts = {
        "traced": rollout("traced", triplets=[triplet]),
        "untraced": rollout("untraced"),
        "failed": rollout("failed", None),  # the agent raised: not trained on
        "empty": rollout("empty", 0.5, triplets=[]),
    }
    assert without_triplets(rollouts) == ["untraced", "empty"]
    calls = {
        "traced": [call([9], [9])],  # never used: the client's triplets win
        "untraced": [call([1, 2], [3, 4], [5]), call(None, [6]), call([7], [8], status=400), call([1, 2, 3, 4], [10])],
        "empty": [call([5], [])],  # no response ids: nothing to build
    }
    kept = rollouts["untraced"]
    assert fill_from_calls(rollouts, calls) == 2
    filled = rollouts["untraced"]
    assert filled is not kept and kept.triplets is None  # a copy: the stored result is not changed
    rows = [(t.prompt["token_ids"], t.response["token_ids"]) for t in filled.triplets]
    assert rows == [([1, 2], [3, 4]), ([1, 2, 3, 4], [10])]  # first choice; whole 200s with both ids; in order
    assert all(t.metadata["source"] == FROM_PROXY and t.reward is None for t in filled.triplets)
    assert (filled.final_reward, rollouts["traced"].triplets[0].response, rollouts["empty"].triplets) == (
        1.0,
        {"token_ids": [2]},
        [],
    )
    no_training_data(rollouts.values())  # the step has something to train on now
