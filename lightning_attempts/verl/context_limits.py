"""How verl's daemon (v0) tells its LLM proxy the limits over-long calls are held to (``llm_proxy.context``).

The same on agentlightning 0.1.2, 0.2.2 and 0.3.0:

- the tokenizer: the daemon's constructor argument (``tokenizer``), the trainer's own (a copy: the proxy
  counts in a thread of its own);
- the model's context: vLLM's ``max_model_len`` (verl's rollout ``max_model_len``, else its
  ``prompt_length + response_length``), read from the backends' ``GET /v1/models`` in the background
  as a batch is set up (the engines are awake then), until one says it;
- the trainer's ``max_prompt_length`` and ``max_response_length``: the arguments of
  ``get_train_data_batch(max_prompt_length, max_response_length, ...)`` (the trainer's
  ``data.max_prompt_length`` and ``max_response_length``), so from the second training step on; they
  apply to training batches only (``_async_set_up``'s ``is_train``), and only at the ``transition``
  trace level (0.3.0's ``trace_aggregator``; 0.1.2 and 0.2.2 have no other), where a row is one call.

Any limit not (yet) known is not applied; with none known, calls go on unchanged.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping, Sequence
from typing import Any, cast

from ..llm_proxy.context import ContextGuard, TrainerLimits

TRANSITION = "transition"


def own_tokenizer(tokenizer: Any) -> Any:
    """A copy of the trainer's tokenizer for the proxy's thread (a fast tokenizer used from two threads at once can
    raise "Already borrowed"); the tokenizer itself when it cannot be copied; None for None."""
    if tokenizer is None:
        return None
    try:
        return copy.deepcopy(tokenizer)
    except Exception:
        return tokenizer


def trainer_limits(args: Sequence[Any], kwargs: Mapping[str, Any]) -> TrainerLimits | None:
    """The limits in a ``get_train_data_batch`` call (by position or name), None unless both are positive ints."""
    prompt = kwargs.get("max_prompt_length", args[0] if args else None)
    response = kwargs.get("max_response_length", args[1] if len(args) > 1 else None)
    if not (_positive(prompt) and _positive(response)):
        return None
    return TrainerLimits(max_prompt_length=prompt, max_response_length=response)


def rows_are_calls(daemon: Any) -> bool:
    """Whether each training row is one LLM call (the ``transition`` trace level, the only one before 0.3)."""
    aggregator: Any = getattr(daemon, "trace_aggregator", None)
    if not isinstance(aggregator, Mapping):
        return True
    return cast(Mapping[str, Any], aggregator).get("level", TRANSITION) == TRANSITION


def learn_from_batch_call(
    guard: ContextGuard, daemon: Any, args: Sequence[Any], kwargs: Mapping[str, Any], *, enabled: bool = True
) -> None:
    """Take the trainer's limits from a ``get_train_data_batch`` call (run on the proxy's loop), unless not
    ``enabled`` (the server's ``llm_trainer_limits``)."""
    if enabled and rows_are_calls(daemon) and (limits := trainer_limits(args, kwargs)) is not None:
        guard.trainer = limits


def set_up_batch(guard: ContextGuard, addresses: Sequence[str], is_train: bool) -> asyncio.Task[bool] | None:
    """A batch is being set up (on the proxy's loop): the trainer's limits hold for a training batch; the model's
    context is asked for in the background if not known (the task, if any)."""
    guard.training = is_train
    return guard.learn_in_background(addresses)


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
