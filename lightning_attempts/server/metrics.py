"""Prometheus exposition of the attempt counters, served at ``/metrics`` when prometheus_client is installed.

The counters are read from the store when scraped, so serving metrics costs nothing per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

PREFIX = "lightning_attempts"
_GAUGES = {
    "claims_in_flight": "Claims handed out and neither completed nor requeued.",
    "queued": "Tasks waiting for a claim.",
    "completed_unretrieved": "Stored results not yet retrieved by the trainer.",
    "finished_remembered": "Finished tasks remembered to answer late results.",
    "polls_parked": "Long polls (GET /task?wait=S) waiting for a task.",
}
_COUNTERS = {
    "claims": "Tasks handed out (each claim is an attempt).",
    "claims_undelivered": "Claims given back because their long poll's client had gone.",
    "requeues": "Claims requeued after a timeout or silence.",
    "requeues_unresponsive": "Claims requeued because their worker went silent.",
    "max_claims_exceeded": "Tasks completed empty after max_claims claims.",
    "accepted": "Results stored.",
    "accepted_unverified": "Results stored from old clients without an attempt id.",
    "accepted_unverified_reclaimed": "Results stored without an attempt id for a task claimed more than once.",
    "salvaged": "Late results stored under stale_policy='salvage'.",
    "duplicates": "Retries of an already stored attempt.",
    "refused": "Results refused for lack of an attempt id.",
    "heartbeats": "Heartbeats of current attempts.",
    "heartbeats_stale": "Heartbeats of attempts that no longer hold their claim.",
    "unauthorized": "Requests refused (401) for lack of the server's API key.",
    "failed_attempts": "Failed results posted by live attempts (counted while retry_failed is set).",
    "failure_retries": "Tasks requeued after a failed result (retry_failed).",
    "failed_stored": "Failed results stored, marked failed, after retry_failed or max_claims ran out.",
    "releases": "Claims given back by their worker (POST /release).",
    "releases_stale": "Releases of attempts that no longer held their claim.",
}


def exposition(stats: Callable[[], dict[str, Any]]) -> Callable[[], tuple[bytes, str]] | None:
    """A function rendering ``stats()`` in Prometheus' text format with its content type.

    ``None`` when prometheus_client is not installed (``pip install 'lightning-attempts[metrics]'``).
    """
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
        from prometheus_client.registry import Collector
    except ImportError:
        return None

    class AttemptCollector(Collector):
        def collect(self) -> Iterator[Metric]:
            counts = stats()
            for name, documentation in _COUNTERS.items():
                yield CounterMetricFamily(f"{PREFIX}_{name}", documentation, value=counts[name])
            dropped = CounterMetricFamily(f"{PREFIX}_dropped", "Results dropped, by reason.", labels=["reason"])
            for reason, count in counts["dropped"].items():
                dropped.add_metric([reason], count)
            yield dropped
            for name, documentation in _GAUGES.items():
                yield GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=counts[name])

    registry = CollectorRegistry(auto_describe=False)
    registry.register(AttemptCollector())
    return lambda: (generate_latest(registry), CONTENT_TYPE_LATEST)
