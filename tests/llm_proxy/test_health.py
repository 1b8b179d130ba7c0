"""A backend's circuit: opened after calls failing in a row, a trial after the cooldown, re-admitted by its success."""

from __future__ import annotations

import logging

import pytest

from lightning_attempts.llm_proxy.health import BackendHealth, Circuit
from lightning_attempts.testing import ManualClock


def test_the_circuit_opens_after_failures_in_a_row_only() -> None:
    health = BackendHealth(failures_to_open=3, clock=ManualClock())
    for _ in range(2):
        health.failed("a:1", "status_503")
    health.succeeded("a:1")  # a success in between: the count starts again
    for _ in range(2):
        health.failed("a:1", "timeout")
    assert health.circuit("a:1") is Circuit.CLOSED and health.admits("a:1")
    health.failed("a:1", "connect_error")
    assert health.circuit("a:1") is Circuit.OPEN and not health.admits("a:1")


def test_after_the_cooldown_one_trial_call_at_a_time_and_its_failure_opens_again() -> None:
    clock = ManualClock()
    health = BackendHealth(failures_to_open=1, cooldown=5.0, clock=clock)
    health.failed("a:1", "connect_error")
    clock.advance(4.9)
    assert not health.admits("a:1")
    clock.advance(0.1)
    assert health.circuit("a:1") is Circuit.HALF_OPEN and health.admits("a:1")
    health.taken("a:1")
    assert not health.admits("a:1")  # the trial is in flight
    health.failed("a:1", "first_byte_timeout")
    assert health.circuit("a:1") is Circuit.OPEN
    clock.advance(5.0)
    health.taken("a:1")
    health.ended("a:1")  # the trial's client left: no verdict, the next call is the trial
    assert health.admits("a:1")


def test_a_backend_that_recovered_is_re_admitted_at_its_first_trial(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    health = BackendHealth(failures_to_open=2, cooldown=5.0, clock=clock)
    with caplog.at_level(logging.INFO, "lightning_attempts.llm_proxy.health"):
        for _ in range(4):
            health.failed("a:1", "status_503")  # calls in flight when it opened fail too: one WARNING
        clock.advance(5.0)
        health.taken("a:1")
        health.succeeded("a:1")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "a:1 passed over: 2 calls in a row failed (the last: status_503)" in warnings[0]
    assert "a:1 re-admitted" in warnings[1]
    assert health.circuit("a:1") is Circuit.CLOSED
    stats = health.stats()
    assert (stats["backend_failures"], stats["backends_opened"], stats["backends_open"]) == (4, 1, 0)
    assert stats["backends"]["a:1"]["readmitted"] == 1


def test_an_unknown_backend_is_closed_and_bad_settings_are_refused() -> None:
    health = BackendHealth()
    assert health.admits("new:1") and health.stats()["backends"] == {}
    with pytest.raises(ValueError):
        BackendHealth(failures_to_open=0)
