"""The Grafana dashboard shipped in the package names only metrics ``/metrics`` exposes, the LLM proxy's included."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lightning_attempts import AttemptAwareServer
from lightning_attempts.llm_proxy import AttachedProxy
from lightning_attempts.llm_proxy.stats import LatencyHistogram
from lightning_attempts.server.metrics import coarse_buckets
from lightning_attempts.testing import ManualClock, ServerThread, serve_in_thread

BOARD = Path(__file__).parents[2] / "lightning_attempts" / "dashboard" / "grafana.json"
METRIC = re.compile(r"\blightning_attempts_[a-z0-9_]+")


@pytest.fixture
def served() -> Iterator[ServerThread[AttemptAwareServer]]:
    server = AttemptAwareServer(port=0, clock=ManualClock())
    with serve_in_thread(server) as running:
        yield running


def exposed(url: str) -> set[str]:
    """Every sample name ``/metrics`` answers (``_total``, ``_bucket``, ``_sum``, ``_count`` included), and every
    counter family's ``_total``, which a labelled counter without a label yet (no refusal so far) has no sample of."""
    families = list(text_string_to_metric_families(httpx.get(f"{url}/metrics").text))
    samples = {sample.name for family in families for sample in family.samples}
    return samples | {f"{family.name}_total" for family in families if family.type == "counter"}


def test_every_metric_the_grafana_dashboard_names_is_exposed(served: ServerThread[AttemptAwareServer]) -> None:
    board = json.loads(BOARD.read_text())
    exprs = [target["expr"] for panel in board["panels"] for target in panel["targets"]]
    named = {name for expr in exprs for name in METRIC.findall(expr)}
    assert any("llm_proxy" in name for name in named) and len(named) > 20
    without_proxy = exposed(served.endpoint)
    assert not any("llm_proxy" in name for name in without_proxy)  # no proxy, none of its metrics
    server = served.server
    served.server.llm_proxy_readout = AttachedProxy(server, lambda: [], port=0, timeout_seconds=5.0)  # as verl's daemon
    assert named <= exposed(served.endpoint)


def test_the_proxys_latency_buckets_are_summed_into_prometheus_buckets() -> None:
    histogram = LatencyHistogram()
    for seconds in (0.00003, 0.0003, 0.002, 0.002, 0.7, 50.0):
        histogram.add(seconds)
    buckets = dict(coarse_buckets(histogram.counts))
    assert buckets["0.0001"] == 1 and buckets["0.0005"] == 2 and buckets["0.0025"] == 4
    assert buckets["0.5"] == 4 and buckets["1"] == 5 and buckets["10"] == 5 and buckets["+Inf"] == 6
