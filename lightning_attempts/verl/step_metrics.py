"""What a verl step logs of its attempts: ``attempts/*`` (training) and ``val/attempts/*`` (validation).

Counts are the step's own: the difference of the server's ``attempt_stats()`` between the
moment the daemon set the batch up and the moment verl asked for its metrics, so a
straggler of an earlier batch dropped during this step is counted in this step. The
per-task figures come from the batch's own tasks (``attempt_history``). With the daemon's
attempt-aware LLM proxy, the same window of its ``stats()`` gives the step's LLM calls, those
refused because their attempt was no longer live, the calls that failed on a vLLM server, were re-sent to another or
opened a server's circuit, and the time the proxy added to each call, and the over-long calls it capped or
refused (``llm_proxy.context``). ``stall_line`` is
the daemon's progress line for a stalled fleet (tasks waiting while no worker asks for one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..llm_proxy import latency_between
from .training_data import TokenIdFill

TRAIN_PREFIX = "attempts/"
VAL_PREFIX = "val/attempts/"

FROM_COUNTERS: dict[str, str] = {
    "claims": "claims",
    "given_up": "given_up",
    "requeues": "requeues",
    "dropped": "dropped_total",
    "retries": "failure_retries",
    "released": "releases",
    "released_unrun": "releases_unrun",
    "accepted_unverified": "accepted_unverified",
    "kept_past_timeout": "claims_kept_past_timeout",
    "stalls": "stall_episodes",
    "stalled_s": "stall_seconds",
}
"""Metric name: the ``attempt_stats()`` counter it is the step's difference of."""

FROM_PROXY: dict[str, str] = {
    "llm_calls": "forwarded",
    "llm_calls_refused_stale": "refused_not_live",
    "llm_backend_failures": "backend_failures",
    "llm_resent": "resent",
    "llm_backends_opened": "backends_opened",
}
"""Metric name: the LLM proxy's ``stats()`` counter it is the step's difference of."""

FROM_CONTEXT: dict[str, str] = {
    "llm_calls_capped": "context_capped",
    "llm_max_tokens_cut": "context_capped_tokens",
    "llm_calls_refused_too_long": "context_refused",
    "llm_calls_refused_prompt_too_long": "context_refused_prompt",
    "llm_prompts_tokenized": "context_tokenized",
    "llm_tokenize_s": "context_tokenize_seconds",
}
"""Metric name: the over-long calls' counter of the LLM proxy's ``stats()`` it is the step's difference of."""
FROM_DRAIN: dict[str, str] = {
    "llm_in_flight_at_batch_end": "in_flight_at_step_end",
    "llm_drain_seconds": "drain_seconds",
    "llm_calls_cut": "calls_cut",
    "llm_calls_refused_step_ended": "refused_step_ended",
}
"""The step's end (``llm_proxy.draining``): calls in flight when its batch was done, the time waited for them, those
cut past ``llm_drain_timeout_seconds``, the calls refused after it."""


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
    proxy_before: Mapping[str, Any] | None = None
    """The LLM proxy's ``stats()`` when the batch was set up (None: no attempt-aware proxy)."""


@dataclass
class StepTokenIds:
    """What the step's triplets without token ids got from the LLM proxy's records (``training_data``)."""

    filled: int = 0
    replaced: int = 0
    left: int = 0
    """Triplets still without token ids as verl takes them (set, not added: read again at each look)."""

    def add(self, fill: TokenIdFill) -> None:
        self.filled += fill.filled
        self.replaced += fill.replaced

    def metrics(self, prefix: str) -> dict[str, float]:
        """``proxy_token_ids_filled``, ``proxy_replaced_rollouts`` and ``triplets_without_token_ids``, under
        ``prefix``."""
        return {
            f"{prefix}proxy_token_ids_filled": float(self.filled),
            f"{prefix}proxy_replaced_rollouts": float(self.replaced),
            f"{prefix}triplets_without_token_ids": float(self.left),
        }


def step_metrics(
    window: StepWindow,
    after: Mapping[str, Any],
    histories: Iterable[Sequence[Mapping[str, Any]] | None],
    cancelled: int,
    prefix: str,
    proxy_after: Mapping[str, Any] | None = None,
    proxy_triplets: int = 0,
) -> dict[str, float]:
    """The step's ``attempts/*`` metrics, under ``prefix``.

    ``after``: ``attempt_stats()`` now; ``histories``: ``attempt_history()`` of each task of
    the batch (None for one the server no longer remembers); ``cancelled``: tasks of earlier
    batches the daemon cancelled before queueing this one; ``proxy_after``: the LLM proxy's
    ``stats()`` now; ``proxy_triplets``: the triplets built from its records for this step.
    """
    metrics = {name: float(after[key] - window.before[key]) for name, key in FROM_COUNTERS.items()}
    metrics["cancelled"] = float(cancelled)
    claims = [history for history in histories if history]
    metrics["max_claims_per_task"] = float(max((len(history) for history in claims), default=0))
    metrics["longest_kept_claim_s"] = max((_held(entry) for history in claims for entry in history), default=0.0)
    if claims:
        first = min(float(history[0]["claimed_at"]) for history in claims)
        metrics["queue_to_first_claim_s"] = max(first - window.queued_at, 0.0)
    if window.last_result_monotonic is not None:
        metrics["queue_to_last_result_s"] = window.last_result_monotonic - window.queued_monotonic
    if window.proxy_before is not None and proxy_after is not None:
        metrics.update(proxy_metrics(window.proxy_before, proxy_after, proxy_triplets))
    return {prefix + name: value for name, value in metrics.items()}


def stall_line(stats: Mapping[str, Any], said: float) -> str | None:
    """The daemon's line for a stall the server's fleet watch is in, unless said already (``said``: the
    ``stall_episodes`` of the last stall said, -1 for none); None when there is none to say."""
    if not stats["stall_ongoing_seconds"] or stats["stall_episodes"] <= said:
        return None
    return (
        f"Stalled for {stats['stall_ongoing_seconds']:.0f}s: {stats['queued']} task(s) queued, none in flight, and no "
        f"worker asking for one; {stats['stall_stranded_attempts']:.0f} worker(s) never came back from claims the "
        "server ended (its WARNING, from lightning_attempts.server, says what to do)"
    )


def _held(entry: Mapping[str, Any]) -> float:
    """How long a claim kept past its task timeout was held, from its claim to its end; 0 for any other claim."""
    if not entry.get("kept_past_timeout") or entry.get("ended_at") is None:
        return 0.0
    return max(float(entry["ended_at"]) - float(entry["claimed_at"]), 0.0)


def proxy_metrics(before: Mapping[str, Any], after: Mapping[str, Any], triplets: int) -> dict[str, float]:
    """The step's LLM calls through the proxy, those refused as stale, its backends' failures, the triplets built from
    its records, the backends passed over at the step's end, and the p50 and p99 of the time it added to each call
    (left out when no call was forwarded)."""
    metrics = {name: float(after[key] - before[key]) for name, key in FROM_PROXY.items()}
    metrics.update({name: float(after.get(key, 0) - before.get(key, 0)) for name, key in FROM_CONTEXT.items()})
    metrics.update({name: float(after[key] - before[key]) for name, key in FROM_DRAIN.items()})
    metrics["llm_backends_open"] = float(after["backends_open"])
    metrics["proxy_triplets"] = float(triplets)
    added = latency_between(before, after)
    if added["p50_ms"] is not None and added["p99_ms"] is not None:
        metrics["llm_proxy_added_p50_ms"] = added["p50_ms"]
        metrics["llm_proxy_added_p99_ms"] = added["p99_ms"]
    return metrics
