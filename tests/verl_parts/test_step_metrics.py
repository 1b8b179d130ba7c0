"""The step's ``attempts/*`` metrics, computed from two counter snapshots and the batch's histories, without verl."""

from __future__ import annotations

from typing import Any

import pytest

from lightning_attempts.llm_proxy.stats import LatencyHistogram
from lightning_attempts.verl.step_metrics import (
    FROM_COUNTERS,
    TRAIN_PREFIX,
    VAL_PREFIX,
    StepTokenIds,
    StepWindow,
    stall_line,
    step_metrics,
)
from lightning_attempts.verl.training_data import TokenIdFill


def stats(**counts: float) -> dict[str, Any]:
    return {counter: counts.get(counter, 0) for counter in FROM_COUNTERS.values()}


def claim(at: float) -> dict[str, Any]:
    return {"claimed_at": at, "outcome": "completed"}


def test_counts_are_the_steps_own_differences() -> None:
    before = stats(claims=10, requeues=1, dropped_total=2, failure_retries=0, releases=3, accepted_unverified=4)
    after = stats(
        claims=14, requeues=2, dropped_total=5, failure_retries=1, releases=3, accepted_unverified=6, given_up=1
    )
    window = StepWindow(before, queued_at=100.0, queued_monotonic=50.0, rollout_ids=["a", "b"])
    metrics = step_metrics(window, after, [[claim(100.5)], [claim(101.0), claim(104.0)]], cancelled=2, prefix="p/")
    assert metrics == {
        "p/claims": 4.0,
        "p/given_up": 1.0,
        "p/requeues": 1.0,
        "p/dropped": 3.0,
        "p/retries": 1.0,
        "p/released": 0.0,
        "p/released_unrun": 0.0,
        "p/accepted_unverified": 2.0,
        "p/kept_past_timeout": 0.0,
        "p/stalls": 0.0,
        "p/stalled_s": 0.0,
        "p/cancelled": 2.0,
        "p/max_claims_per_task": 2.0,
        "p/longest_kept_claim_s": 0.0,
        "p/queue_to_first_claim_s": 0.5,
    }


def test_the_wait_is_measured_when_the_daemon_saw_the_last_result() -> None:
    window = StepWindow(stats(), queued_at=0.0, queued_monotonic=50.0, last_result_monotonic=57.25)
    metrics = step_metrics(window, stats(), [], cancelled=0, prefix=TRAIN_PREFIX)
    assert metrics["attempts/queue_to_last_result_s"] == pytest.approx(7.25)
    assert metrics["attempts/max_claims_per_task"] == 0.0  # no task of the batch was claimed
    assert "attempts/queue_to_first_claim_s" not in metrics


def test_forgotten_tasks_are_skipped_and_a_clock_step_back_reads_zero() -> None:
    window = StepWindow(stats(), queued_at=200.0, queued_monotonic=0.0)
    metrics = step_metrics(window, stats(claims=1), [None, [claim(199.0)]], cancelled=0, prefix=VAL_PREFIX)
    assert metrics["val/attempts/claims"] == 1.0
    assert metrics["val/attempts/queue_to_first_claim_s"] == 0.0  # wall clock stepped back: never negative


def test_claims_kept_past_their_timeout_are_counted_and_the_longest_is_the_batchs_own() -> None:
    """A slow task shows in no requeue: what the step waited for is its claims kept past the task timeout."""
    before, after = stats(claims_kept_past_timeout=3), stats(claims_kept_past_timeout=5)
    kept = {"claimed_at": 100.0, "ended_at": 130.5, "outcome": "completed", "kept_past_timeout": True}
    quick = {"claimed_at": 100.0, "ended_at": 190.0, "outcome": "timed_out", "kept_past_timeout": False}
    window = StepWindow(before, queued_at=100.0, queued_monotonic=0.0)
    metrics = step_metrics(window, after, [[kept], [quick], [claim(101.0)], None], 0, TRAIN_PREFIX)
    assert (metrics["attempts/kept_past_timeout"], metrics["attempts/longest_kept_claim_s"]) == (2.0, 30.5)


def test_claims_a_broken_worker_gave_back_unrun_are_counted_apart() -> None:
    """Releases a worker made without running the task (no resources): the step says how many were."""
    before, after = stats(releases=3, releases_unrun=2), stats(releases=10, releases_unrun=8)
    metrics = step_metrics(StepWindow(before, queued_at=0.0, queued_monotonic=0.0), after, [], 0, TRAIN_PREFIX)
    assert (metrics["attempts/released"], metrics["attempts/released_unrun"]) == (7.0, 6.0)


def test_a_stall_during_the_step_is_counted_with_its_time() -> None:
    """Tasks waited while no worker asked for one: the step says how often and how long."""
    before, after = stats(stall_episodes=1, stall_seconds=100.0), stats(stall_episodes=2, stall_seconds=460.5)
    metrics = step_metrics(StepWindow(before, queued_at=0.0, queued_monotonic=0.0), after, [], 0, TRAIN_PREFIX)
    assert (metrics["attempts/stalls"], metrics["attempts/stalled_s"]) == (1.0, 360.5)


def test_the_daemon_says_each_stall_once() -> None:
    stalled = {"stall_episodes": 3, "stall_ongoing_seconds": 61.2, "queued": 2, "stall_stranded_attempts": 1.0}
    line = stall_line(stalled, said=-1)
    assert line is not None and line.startswith("Stalled for 61s: 2 task(s) queued, none in flight")
    assert "1 worker(s) never came back" in line
    assert stall_line(stalled, said=3) is None  # said already
    assert stall_line({**stalled, "stall_ongoing_seconds": 0.0}, said=-1) is None  # over


def proxy_stats(
    forwarded: int,
    refused_not_live: int,
    added_ms: list[float],
    failures: tuple[int, int, int, int] = (0, 0, 0, 0),
    drain: tuple[int, float, int, int] = (0, 0, 0, 0),
) -> dict[str, Any]:
    """The LLM proxy's ``stats()`` after calls that spent ``added_ms`` each in the proxy; ``failures``: the backends'
    failures, calls re-sent, circuits opened in all and open now; ``drain``: calls in flight at steps' ends, seconds
    waited for them, calls cut, calls refused after a step's end."""
    histogram = LatencyHistogram()
    for milliseconds in added_ms:
        histogram.add(milliseconds / 1000)
    return {
        "forwarded": forwarded,
        "refused_not_live": refused_not_live,
        **dict(zip(("backend_failures", "resent", "backends_opened", "backends_open"), failures, strict=True)),
        **dict(zip(("in_flight_at_step_end", "drain_seconds", "calls_cut", "refused_step_ended"), drain, strict=True)),
        "added_latency_buckets": list(histogram.counts),
        "added_latency_sum_s": histogram.sum,
    }


def test_the_proxys_calls_refusals_triplets_and_added_time_are_the_steps_own() -> None:
    before = proxy_stats(5, 1, [50.0] * 10)  # an earlier step's slow calls: not this step's
    after = proxy_stats(9, 3, [50.0] * 10 + [1.0] * 99 + [8.0])
    window = StepWindow(stats(), queued_at=0.0, queued_monotonic=0.0, proxy_before=before)
    metrics = step_metrics(window, stats(), [], 0, TRAIN_PREFIX, proxy_after=after, proxy_triplets=7)
    assert {key: metrics[f"attempts/{key}"] for key in ("llm_calls", "llm_calls_refused_stale", "proxy_triplets")} == {
        "llm_calls": 4.0,
        "llm_calls_refused_stale": 2.0,
        "proxy_triplets": 7.0,
    }
    assert metrics["attempts/llm_proxy_added_p50_ms"] == pytest.approx(1.0, rel=0.08)  # buckets 7.5% wide
    assert metrics["attempts/llm_proxy_added_p99_ms"] == pytest.approx(1.0, rel=0.08)
    assert any("refused" in key for key in metrics)


def test_the_backends_failures_and_re_sent_calls_are_the_steps_own_the_open_circuits_as_they_end_it() -> None:
    before = proxy_stats(5, 0, [1.0], failures=(10, 9, 1, 0))
    after = proxy_stats(9, 0, [1.0], failures=(14, 12, 2, 1))
    window = StepWindow(stats(), queued_at=0.0, queued_monotonic=0.0, proxy_before=before)
    metrics = step_metrics(window, stats(), [], 0, TRAIN_PREFIX, proxy_after=after)
    names = ("llm_backend_failures", "llm_resent", "llm_backends_opened", "llm_backends_open")
    assert [metrics[f"attempts/{name}"] for name in names] == [4.0, 3.0, 1.0, 1.0]


def test_no_call_forwarded_leaves_the_added_time_out_and_no_proxy_leaves_every_proxy_metric_out() -> None:
    quiet = proxy_stats(2, 0, [3.0])
    window = StepWindow(stats(), queued_at=0.0, queued_monotonic=0.0, proxy_before=quiet)
    metrics = step_metrics(window, stats(), [], 0, VAL_PREFIX, proxy_after=quiet)
    assert metrics["val/attempts/llm_calls"] == 0.0 and "val/attempts/llm_proxy_added_p50_ms" not in metrics
    without = step_metrics(StepWindow(stats(), queued_at=0.0, queued_monotonic=0.0), stats(), [], 0, TRAIN_PREFIX)
    assert not any("llm" in key or "proxy" in key for key in without)


def test_the_triplets_given_the_proxys_token_ids_add_up_and_those_left_without_are_as_last_seen() -> None:
    token_ids = StepTokenIds()
    token_ids.add(TokenIdFill(filled=3, built=0, replaced=0))
    token_ids.add(TokenIdFill(filled=1, built=4, replaced=2))
    token_ids.left = 5
    token_ids.left = 1  # read again: what verl takes
    assert token_ids.metrics(VAL_PREFIX) == {
        "val/attempts/proxy_token_ids_filled": 4.0,
        "val/attempts/proxy_replaced_rollouts": 2.0,
        "val/attempts/triplets_without_token_ids": 1.0,
    }


def test_the_wait_at_the_steps_end_and_the_calls_it_cut_are_the_steps_own() -> None:
    before = proxy_stats(5, 0, [1.0], drain=(3, 10.0, 1, 4))
    after = proxy_stats(9, 0, [1.0], drain=(5, 12.5, 2, 10))
    window = StepWindow(stats(), queued_at=0.0, queued_monotonic=0.0, proxy_before=before)
    metrics = step_metrics(window, stats(), [], 0, VAL_PREFIX, proxy_after=after)
    names = ("llm_in_flight_at_batch_end", "llm_drain_seconds", "llm_calls_cut", "llm_calls_refused_step_ended")
    assert [metrics[f"val/attempts/{name}"] for name in names] == [2.0, 2.5, 1.0, 6.0]
