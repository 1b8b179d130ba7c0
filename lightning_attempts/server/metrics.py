"""Prometheus exposition of the attempt counters, served at ``/metrics`` when prometheus_client is installed.

The counters are read from the store when scraped, so serving metrics costs nothing per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
            for name, documentation in {**COUNTERS, **_SERVER_COUNTERS}.items():
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
