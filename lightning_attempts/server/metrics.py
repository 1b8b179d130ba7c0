"""Prometheus exposition of the attempt counters, served at ``/metrics`` when prometheus_client is installed.

The counters are read from the store when scraped, so serving metrics costs nothing per request. With an
attempt-aware LLM proxy beside the server (verl's daemon), its counters and added-latency histogram are exposed
too, as ``lightning_attempts_llm_proxy_*``, read from its ``stats()`` when scraped.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..store.counters import COUNTERS
from . import fleet

PREFIX = "lightning_attempts"
_GAUGES = {
    "claims_in_flight": "Claims handed out and neither completed nor requeued.",
    "queued": "Tasks waiting for a claim.",
    "completed_unretrieved": "Stored results not yet retrieved by the trainer.",
    "finished_remembered": "Finished tasks remembered to answer late results.",
    "polls_parked": "Long polls (GET /task?wait=S) waiting for a task.",
    "workers_giving_back": "Workers that gave back a claim without running it in the last 5 minutes.",
    "unrun_since_last_result": "Claims given back without being run since the last stored result.",
    "longest_kept_claim_seconds": "Longest age seen of a claim kept past task_timeout_seconds (task_budget).",
    **fleet.gauges(),
}
_SERVER_COUNTERS = fleet.counters()

PROXY_PREFIX = f"{PREFIX}_llm_proxy"
PROXY_COUNTERS = {
    "forwarded": "LLM calls forwarded to a backend.",
    "forwarded_plain": "LLM calls forwarded without an attempt in their path.",
    "forwarded_attempt": "LLM calls forwarded for a live attempt.",
    "failed_upstream": "LLM calls whose backend failed.",
    "timed_out_upstream": "LLM calls whose backend did not answer in time.",
    "client_disconnected": "LLM calls whose client left before the answer.",
    "no_backend": "LLM calls refused for want of a backend.",
    "refused_not_live": "LLM calls refused (409) because their attempt no longer held its claim.",
    "evicted_attempts": "Attempts whose recorded calls were forgotten to stay within bounds.",
    "calls_not_recorded": "LLM calls not recorded (over an attempt's cap, or too large).",
    "context_tokenized": "LLM calls whose prompt was tokenized to check it against the context.",
    "context_capped": "LLM calls whose max_tokens was lowered to fit the context or max_response_length.",
    "context_capped_tokens": "Tokens taken off the max_tokens of capped LLM calls.",
    "context_refused": "LLM calls refused (400) because their prompt does not fit the model's context.",
    "context_refused_prompt": "LLM calls refused (400) because their prompt is over the trainer's max_prompt_length.",
    "context_tokenize_seconds": "Seconds spent tokenizing prompts (in the proxy's tokenizing thread).",
    "context_unreadable": "LLM calls whose prompt could not be counted (images, a template that failed): unchanged.",
    "context_unchecked_busy": "LLM calls passed on unchecked because too many were waiting to be tokenized.",
    "in_flight_at_step_end": "LLM calls in flight when a verl step's batch was done, summed over the steps.",
    "drain_seconds": "Seconds verl steps waited, at their end, for LLM calls in flight.",
    "calls_cut": "LLM calls cut at a step's end, still in flight after llm_drain_timeout_seconds.",
    "refused_step_ended": "LLM calls refused (409 step_ended) between a step's end and the next batch.",
}
PROXY_GAUGES = {
    "in_flight": "LLM calls in flight.",
    "routed_attempts": "Attempts with a backend remembered.",
    "recorded_attempts": "Attempts with recorded calls.",
    "recorded_calls": "LLM calls recorded.",
}
LATENCY_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
"""The buckets (seconds) of ``lightning_attempts_llm_proxy_added_latency_seconds``: the proxy's finer ones summed."""
_FINE_PER_DECADE, _FINE_LOWEST = 32, 1e-6  # llm_proxy.stats' buckets: 32 a decade from 1 us


def coarse_buckets(fine: Sequence[int]) -> list[tuple[str, float]]:
    """The proxy's fine latency counts as Prometheus' cumulative buckets at ``LATENCY_BOUNDS`` and ``+Inf``."""
    uppers = [_FINE_LOWEST * 10 ** ((i + 1) / _FINE_PER_DECADE) for i in range(len(fine) - 1)]
    cumulative = [0] * (len(fine) + 1)
    for index, count in enumerate(fine):
        cumulative[index + 1] = cumulative[index] + count
    buckets = [
        (format(bound, "g"), float(cumulative[bisect.bisect_right(uppers, bound * (1 + 1e-9))]))
        for bound in LATENCY_BOUNDS
    ]
    return [*buckets, ("+Inf", float(cumulative[-1]))]


def exposition(
    stats: Callable[[], dict[str, Any]], proxy_stats: Callable[[], dict[str, Any] | None] = lambda: None
) -> Callable[[], tuple[bytes, str]] | None:
    """A function rendering ``stats()`` (and ``proxy_stats()``, the LLM proxy's, unless None) in Prometheus' text
    format with its content type.

    ``None`` when prometheus_client is not installed (``pip install 'lightning-attempts[metrics]'``).
    """
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
        from prometheus_client.registry import Collector
    except ImportError:
        return None

    class AttemptCollector(Collector):
        def collect(self) -> Iterator[Metric]:
            counts = stats()
            for name, documentation in {**COUNTERS, **_SERVER_COUNTERS}.items():
                yield CounterMetricFamily(f"{PREFIX}_{name}", documentation, value=counts[name])
            dropped = CounterMetricFamily(f"{PREFIX}_dropped", "Results dropped, by reason.", labels=["reason"])
            for reason, count in counts["dropped"].items():
                dropped.add_metric([reason], count)
            yield dropped
            for name, documentation in _GAUGES.items():
                yield GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=counts[name])
            proxy = proxy_stats()
            if proxy is not None:
                yield from proxy_metrics(proxy)

    def proxy_metrics(proxy: dict[str, Any]) -> Iterator[Metric]:
        for name, documentation in PROXY_COUNTERS.items():
            yield CounterMetricFamily(f"{PROXY_PREFIX}_{name}", documentation, value=proxy.get(name, 0))
        refused = CounterMetricFamily(f"{PROXY_PREFIX}_refused", "LLM calls refused, by reason.", labels=["reason"])
        for reason, count in proxy.get("refused_by_reason", {}).items():
            refused.add_metric([reason], count)
        yield refused
        for name, documentation in PROXY_GAUGES.items():
            yield GaugeMetricFamily(f"{PROXY_PREFIX}_{name}", documentation, value=proxy.get(name, 0))
        yield HistogramMetricFamily(
            f"{PROXY_PREFIX}_added_latency_seconds",
            "Time the proxy added to each forwarded LLM call.",
            buckets=coarse_buckets(proxy["added_latency_buckets"]),
            sum_value=proxy["added_latency_sum_s"],
        )

    registry = CollectorRegistry(auto_describe=False)
    registry.register(AttemptCollector())
    return lambda: (generate_latest(registry), CONTENT_TYPE_LATEST)
