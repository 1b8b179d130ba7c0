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
    TOKEN_IDS_FROM,
    NoTrainingData,
    count_without_token_ids,
    fill_from_calls,
    fill_token_ids,
    lacking_token_ids,
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


def call(prompt: list[int] | None, *responses: list[int], status: int = 200, streamed: bool = False) -> CallRecord:
    tokens = Tokens(
        array("i", prompt) if prompt is not None else None, {i: array("i", r) for i, r in enumerate(responses)}
    )
    return CallRecord.of("POST", "/v1/chat/completions", status, streamed, "127.0.0.1:8000", tokens)


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


def traced(prompt: list[int], response: list[int], reward: float | None = None, **fields: Any) -> dict[str, Any]:
    """A triplet as agentlightning's tracer sends it: a streamed call's ids are ``[]``."""
    return {
        "prompt": {"token_ids": prompt, "raw_content": "p", **fields},
        "response": {"token_ids": response, "raw_content": "r"},
        "reward": reward,
        "metadata": {"agent_name": "a"},
    }


def rows(filled: Any) -> list[tuple[list[int], list[int]]]:
    return [(list(t.prompt["token_ids"]), list(t.response["token_ids"])) for t in filled.triplets]


def test_a_streamed_calls_triplet_without_token_ids_takes_those_of_the_call_at_its_position() -> None:
    client = [
        traced([1, 2], [3]),  # a whole answer: the tracer has its ids, the proxy's agree
        traced([], [], image_urls=["u"]),  # a streamed one: "contains empty response" upstream
        traced([5], [], reward=0.5),  # a response without ids is as empty
    ]
    rollouts = {"streaming": rollout("streaming", 0.75, triplets=client)}
    rollouts["whole"] = rollout("whole", triplets=client[:1])
    assert lacking_token_ids(rollouts) == ["streaming"]
    assert count_without_token_ids(rollouts.values()) == 2
    calls = {
        "streaming": [call([1, 2], [3]), call([4, 4], [6, 7], streamed=True), call([8], [9], streamed=True)],
        "whole": [call([1, 2], [9])],  # never used: its triplets have their ids
    }
    kept = rollouts["streaming"]
    done = fill_token_ids(rollouts, calls)
    assert (done.filled, done.built, done.replaced) == (2, 0, 0)
    filled = rollouts["streaming"]
    assert filled is not kept and kept.triplets[1].response["token_ids"] == []  # a copy
    assert rows(filled) == [([1, 2], [3]), ([4, 4], [6, 7]), ([8], [9])]
    assert filled.triplets[0] == kept.triplets[0]  # a triplet with its ids stays as the client sent it
    second, third = filled.triplets[1], filled.triplets[2]
    assert second.prompt == {"token_ids": [4, 4], "raw_content": "p", "image_urls": ["u"]}  # its other fields kept
    assert second.metadata == {"agent_name": "a", TOKEN_IDS_FROM: FROM_PROXY}
    assert (second.reward, third.reward, filled.final_reward) == (None, 0.5, 0.75)  # rewards unchanged
    assert rows(rollouts["whole"]) == [([1, 2], [3])]
    assert count_without_token_ids(rollouts.values()) == 0 and lacking_token_ids(rollouts) == []


@pytest.mark.parametrize(
    ("client", "why"),
    [
        ([traced([], []), traced([], [])], "the tracer saw two calls, the proxy three"),
        ([traced([1], [2]), traced([], []), traced([], [])], "the triplet with ids is not the call at its place"),
    ],
)
def test_when_the_tracer_and_the_proxy_disagree_on_the_calls_the_proxys_triplets_replace_the_clients(
    client: list[dict[str, Any]], why: str
) -> None:
    rollouts = {"r": rollout("r", None, triplets=client)}  # no reward: trained on all the same, as upstream does
    calls = {"r": [call([1, 2], [3]), call([4], [5], streamed=True), call([6], [7], status=400), call([8], [9])]}
    done = fill_token_ids(rollouts, calls)
    assert (done.filled, done.built, done.replaced) == (0, 3, 1), why
    replaced = rollouts["r"]
    assert rows(replaced) == [([1, 2], [3]), ([4], [5]), ([8], [9])], why
    assert [t.metadata["streamed"] for t in replaced.triplets] == [False, True, False]
    assert all(t.metadata["source"] == FROM_PROXY for t in replaced.triplets) and replaced.final_reward is None


def test_without_recorded_ids_a_triplet_stays_as_the_client_sent_it_and_is_counted() -> None:
    client = [traced([1], [])]
    rollouts = {"old-vllm": rollout("old-vllm", triplets=client), "elsewhere": rollout("elsewhere", triplets=client)}
    calls = {"old-vllm": [call(None, streamed=True)]}  # vLLM before 0.10.2: no ids in a stream, asked or not
    kept = dict(rollouts)
    done = fill_token_ids(rollouts, calls)  # "elsewhere": no calls of its stored attempt (not through the proxy)
    assert (done.filled, done.built, done.replaced) == (0, 0, 0)
    assert rollouts == kept and count_without_token_ids(rollouts.values()) == 2
    assert all(rollouts[rid] is kept[rid] for rid in kept)
