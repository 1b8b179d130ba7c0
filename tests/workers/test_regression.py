"""The seed's failure end to end: a verl-like training loop, real upstream workers, one straggler.

Real time: upstream's server times claims out with ``time.time()``, so these runs use a
0.5 s task timeout and a straggler at 2.5x it. What they assert does not depend on the
machine's speed: every claim the straggler makes expires, so its result is always late.
"""

from __future__ import annotations

import functools

import pytest

from lightning_attempts import AttemptAwareServer, StalePolicy, scenario
from lightning_attempts.compat import AgentLightningServer

SCENARIO = scenario.Scenario(batches=3, batch_size=8, task_timeout=0.5, straggle_factor=2.5)
MIXED: list[scenario.WorkerKind] = ["old", "shim", "shim", "old"]


def test_upstream_server_lets_a_stale_result_into_the_training_loop() -> None:
    """Proves the test bites: against upstream the straggler's late result is stored too."""
    old: list[scenario.WorkerKind] = ["old"] * 4
    report = scenario.run(AgentLightningServer, old, SCENARIO)
    assert not report.clean, report
    # A rollout of an earlier batch, a duplicate, or a late rollout after the last batch.
    assert report.from_other_batch + report.duplicates + report.late_after_last_batch >= 1, report
    assert report.stored > report.queued, report  # one logical task, two rollouts
    assert report.duplicates == report.stored - report.queued, report


@pytest.mark.parametrize(
    ("fleet", "stale_policy"),
    [
        (["shim"] * 4, "reject"),
        (["old"] * 4, "reject"),
        (MIXED, "reject"),
        (list(reversed(MIXED)), "reject"),
        (MIXED, "salvage"),
    ],
    ids=["shim", "old", "mixed-old-straggler", "mixed-shim-straggler", "mixed-salvage"],
)
def test_attempt_aware_server_keeps_every_batch_exact(
    fleet: list[scenario.WorkerKind], stale_policy: StalePolicy
) -> None:
    server = functools.partial(AttemptAwareServer, stale_policy=stale_policy)
    report = scenario.run(server, fleet, SCENARIO)
    assert report.clean, report
    assert [b.received for b in report.batches] == [SCENARIO.batch_size] * SCENARIO.batches
    assert report.stored == report.queued == SCENARIO.batches * SCENARIO.batch_size
    stats = report.stats
    assert stats is not None
    assert stats["requeues"] >= 1  # the straggler did straggle,
    assert report.submitted > report.queued  # its results were posted,
    assert stats["accepted"] == report.queued  # and only one result per task was stored:
    assert stats["dropped_total"] + stats["duplicates"] == report.submitted - report.queued, stats
    assert stats["refused"] == 0
    assert sum(n for batch in report.batches for n in batch.drops.values()) <= stats["dropped_total"]
    if "old" not in fleet:
        assert stats["accepted_unverified"] == 0
    if "shim" not in fleet:
        assert stats["accepted_unverified"] == report.queued


def test_a_run_without_a_straggler_is_clean_on_both_servers() -> None:
    """The control: with no claim expiring, upstream's server keeps every batch exact too."""
    calm = scenario.Scenario(batches=2, batch_size=6, task_timeout=5.0, stragglers=0, drain_seconds=0.3)
    for server in (AgentLightningServer, AttemptAwareServer):
        report = scenario.run(server, MIXED, calm)
        assert report.clean, report
        assert report.submitted == report.stored == report.queued == 12
