"""What a verl step trains on: the client's triplets, else the LLM calls its proxy saw; else it fails, saying why.

Upstream's ``get_train_data_batch`` skips each rollout without triplets and, when none has
any, fails inside verl's tensor code ("cannot reshape tensor of 0 elements", agentlightning
issues #50 and #442). Before it, the daemon gives each stored result that has a reward but no
triplets (the agent's tracer missed its calls: agentlightning issues #74, #308, #442, #44)
the triplets of the calls its attempt made through the attempt-aware proxy
(``without_triplets``, ``fill_from_calls``): the attempt whose result is stored, no other.
``no_training_data`` then tells a step with nothing to train on apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from agentlightning.types import Triplet

from ..errors import LightningAttemptsError
from ..llm_proxy import CallRecord

FROM_PROXY = "lightning_attempts.llm_proxy"
"""``metadata["source"]`` of a triplet built from the proxy's records."""


def without_triplets(rollouts: Mapping[str, Any]) -> list[str]:
    """The rollout ids whose result has a reward and no triplets: those the proxy's records may fill.

    A result without a reward is a failure (the runner posts one after the agent raised) or a task
    given up: its calls are not trained on, as upstream trains on none of it.
    """
    return [rid for rid, rollout in rollouts.items() if not rollout.triplets and rollout.final_reward is not None]


def triplets_of(calls: Iterable[CallRecord]) -> list[Triplet]:
    """One triplet per call answered 200 with token ids (a prompt and a first choice, neither empty): the prompt's
    and the first choice's response, in order."""
    triplets: list[Triplet] = []
    for call in calls:
        if call.status != 200 or not call.prompt_token_ids or not call.response_token_ids:
            continue
        if not call.response_token_ids[0]:
            continue
        prompt = {"token_ids": list(call.prompt_token_ids)}
        response = {"token_ids": list(call.response_token_ids[0])}
        metadata = {"source": FROM_PROXY, "path": call.path, "streamed": call.streamed}
        triplets.append(Triplet(prompt=prompt, response=response, metadata=metadata))
    return triplets


def fill_from_calls(rollouts: MutableMapping[str, Any], calls: Mapping[str, Sequence[CallRecord]]) -> int:
    """Give each rollout in ``calls`` (its stored attempt's recorded calls) the triplets of those calls, if it has
    none; return how many triplets were built. Each filled rollout is replaced by a copy."""
    built = 0
    for rollout_id, recorded in calls.items():
        rollout = rollouts.get(rollout_id)
        if rollout is None or rollout.triplets:
            continue  # the client's triplets win
        triplets = triplets_of(recorded)
        if triplets:
            rollouts[rollout_id] = rollout.model_copy(update={"triplets": triplets})
            built += len(triplets)
    return built


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
        "Check that the agent's LLM calls reach the tracer (agentlightning's 'No triplets found' warnings) or go "
        "through the daemon's LLM proxy on workers with the switch, and what the server's log says of the given-up "
        "tasks."
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
