"""The seed's failure end to end: a verl-like training loop, real upstream workers, one straggler."""

from __future__ import annotations

import pytest

from lightning_attempts import AttemptAwareServer, scenario
from lightning_attempts.compat import AgentLightningServer

SCENARIO = scenario.Scenario(batches=3)


def test_upstream_server_lets_a_stale_result_into_the_training_loop() -> None:
    """Proves the test bites: against upstream the straggler's late result is stored too."""
    old: list[scenario.WorkerKind] = ["old"] * 4
    report = scenario.run(AgentLightningServer, old, SCENARIO)
    assert not report.clean
    assert report.from_other_batch + report.duplicates + report.late_after_last_batch >= 1
    assert report.stored > report.queued  # one logical task, two rollouts


@pytest.mark.parametrize(
    "fleet",
    [["shim"] * 4, ["old"] * 4, ["old", "shim", "shim", "old"], ["shim", "old", "old", "shim"]],
    ids=["shim", "old", "mixed-old-straggler", "mixed-shim-straggler"],
)
def test_attempt_aware_server_keeps_every_batch_exact(fleet: list[scenario.WorkerKind]) -> None:
    report = scenario.run(AttemptAwareServer, fleet, SCENARIO)
    assert report.clean, report
    assert [b.received for b in report.batches] == [SCENARIO.batch_size] * SCENARIO.batches
    assert report.stored == report.queued
    assert report.stats is not None and report.stats["requeues"] >= 1  # the straggler did straggle
    assert report.drops["already_completed"] + report.drops["superseded"] >= 1  # and its result was dropped
    if "old" not in fleet:
        assert report.stats["accepted_unverified"] == 0
    if "shim" not in fleet:
        assert report.stats["accepted_unverified"] == report.queued
