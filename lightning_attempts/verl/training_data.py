"""What a verl step trains on: the client's triplets, else the LLM calls its proxy saw; else it fails, saying why.

Upstream's ``get_train_data_batch`` skips each rollout without triplets and, when none has
any, fails inside verl's tensor code ("cannot reshape tensor of 0 elements", agentlightning
issues #50 and #442). Before it, the daemon gives each stored result that has a reward but no
triplets (the agent's tracer missed its calls: agentlightning issues #74, #308, #442, #44)
the triplets of the calls its attempt made through the attempt-aware proxy
(``without_triplets``, ``fill_from_calls``): the attempt whose result is stored, no other.
A result whose triplets lack token ids (the tracer records a streamed call with ``token_ids: []``)
takes them from the same records (``lacking_token_ids``, ``fill_token_ids``).
``no_training_data`` then tells a step with nothing to train on apart.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentlightning.types import Triplet

from ..errors import LightningAttemptsError
from ..llm_proxy import CallRecord

logger = logging.getLogger(__name__)

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


TOKEN_IDS_FROM = "token_ids_from"
"""The ``metadata`` key, set to ``FROM_PROXY``, of a client's triplet whose token ids are the proxy's."""


def has_token_ids(triplet: Any) -> bool:
    """Whether a triplet carries prompt and response token ids (neither missing nor empty), as verl needs them."""
    return bool(triplet.prompt.get("token_ids")) and bool(triplet.response.get("token_ids"))


def lacking_token_ids(rollouts: Mapping[str, Any]) -> list[str]:
    """The rollout ids whose result has a triplet without token ids: those the proxy's records may complete.

    Whatever the reward: upstream trains on a result's triplets with or without one (``reward_fillna_value``).
    """
    return [
        rid
        for rid, rollout in rollouts.items()
        if rollout.triplets and not all(has_token_ids(triplet) for triplet in rollout.triplets)
    ]


@dataclass
class TokenIdFill:
    """What ``fill_token_ids`` did to a step's rollouts."""

    filled: int = 0
    """Client triplets given the token ids of the proxy's call at their position."""
    built: int = 0
    """Triplets built from the proxy's records for rollouts whose own triplets were replaced whole."""
    replaced: int = 0
    """Rollouts whose triplets were replaced whole."""


def fill_token_ids(rollouts: MutableMapping[str, Any], calls: Mapping[str, Sequence[CallRecord]]) -> TokenIdFill:
    """Give the triplets without token ids of each rollout in ``calls`` (its stored attempt's recorded calls) the
    proxy's token ids. Each changed rollout is replaced by a copy; the rollout's reward is never changed.

    - Position by position, when the client sent as many triplets as the proxy recorded calls with ids, and each
      client triplet that has ids has those of the call at its position: each triplet without ids takes both the
      prompt's and the response's ids of the call at its position, keeping its reward, its other fields (such as
      ``image_urls``) and its metadata, marked ``TOKEN_IDS_FROM``.
    - Otherwise the tracer and the proxy disagree on which calls there were, so a position means nothing: the
      rollout's triplets are replaced whole by the proxy's (``triplets_of``), as for a result without triplets.
    """
    done = TokenIdFill()
    for rollout_id, recorded in calls.items():
        rollout = rollouts.get(rollout_id)
        if rollout is None or not rollout.triplets or all(has_token_ids(t) for t in rollout.triplets):
            continue
        proxy = triplets_of(recorded)
        if not proxy:
            continue  # nothing recorded with ids (a stream from vLLM before 0.10.2): left as the client sent it
        client: list[Any] = list(rollout.triplets)
        pairs = list(zip(client, proxy, strict=True)) if len(client) == len(proxy) else []
        if pairs and all(not has_token_ids(own) or _same_ids(own, theirs) for own, theirs in pairs):
            triplets = [own if has_token_ids(own) else _with_ids(own, theirs) for own, theirs in pairs]
            done.filled += sum(1 for own in client if not has_token_ids(own))
        else:
            triplets = proxy
            done.built += len(proxy)
            done.replaced += 1
        rollouts[rollout_id] = rollout.model_copy(update={"triplets": triplets})
    if done.filled or done.replaced:
        logger.info(
            "Gave %d triplet(s) without token ids those of their attempt's LLM calls, and replaced the triplets of "
            "%d rollout(s) whose calls the tracer saw otherwise by %d triplet(s) of those calls",
            done.filled,
            done.replaced,
            done.built,
        )
    return done


def count_without_token_ids(rollouts: Iterable[Any]) -> int:
    """The triplets of ``rollouts`` without token ids: verl trains each as an empty row."""
    return sum(1 for rollout in rollouts for triplet in rollout.triplets or () if not has_token_ids(triplet))


def _same_ids(own: Any, theirs: Triplet) -> bool:
    return (
        list(own.prompt["token_ids"]) == theirs.prompt["token_ids"]
        and list(own.response["token_ids"]) == theirs.response["token_ids"]
    )


def _with_ids(own: Any, theirs: Triplet) -> Any:
    """``own`` (a client's triplet) with the prompt and response token ids of ``theirs`` (the proxy's)."""
    prompt = {**own.prompt, "token_ids": theirs.prompt["token_ids"]}
    response = {**own.response, "token_ids": theirs.response["token_ids"]}
    metadata: dict[str, Any] = {**(own.metadata or {}), TOKEN_IDS_FROM: FROM_PROXY}
    return own.model_copy(update={"prompt": prompt, "response": response, "metadata": metadata})


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
