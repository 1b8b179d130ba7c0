"""Refusals for lack of the API key: logged once per peer and route, then summarised with a count."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from lightning_attempts.auth import RefusalLog


class Scheduled:
    """A stand-in for ``loop.call_later``: records what was scheduled; the test runs it."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> None:
        self.calls.append((delay, callback))

    def run(self) -> None:
        calls, self.calls = self.calls, []
        for _, callback in calls:
            callback()


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lightning_attempts.auth"]


@pytest.fixture(autouse=True)
def warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="lightning_attempts.auth")


def test_an_old_worker_polling_is_logged_once_then_summarised(caplog: pytest.LogCaptureFixture) -> None:
    scheduled = Scheduled()
    log = RefusalLog(interval=60, schedule=scheduled)
    for _ in range(100):
        log.refused("10.0.0.7", "GET", "/task", presented=False)
    assert lines(caplog) == [
        "Refused GET '/task' from 10.0.0.7: no API key (401); further refusals from this peer on this route are "
        "summarised every 60s"
    ]
    assert [delay for delay, _ in scheduled.calls] == [60]  # one summary scheduled, not one per refusal
    scheduled.run()
    assert lines(caplog)[1:] == [
        "Refused 99 more request(s) without a valid API key (401) in the last 60s: GET '/task' from 10.0.0.7 x99"
    ]
    # The next minute: counted again, summarised again; never a line per poll.
    for _ in range(5):
        log.refused("10.0.0.7", "GET", "/task", presented=False)
    scheduled.run()
    assert len(lines(caplog)) == 3 and "Refused 5 more" in lines(caplog)[2]
    scheduled.run()  # nothing scheduled, nothing counted: no line
    log.flush()
    assert len(lines(caplog)) == 3


def test_each_peer_and_route_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    scheduled = Scheduled()
    log = RefusalLog(schedule=scheduled)
    for peer in ("10.0.0.1", "10.0.0.2"):
        for method, path in (("GET", "/task"), ("POST", "/rollout"), ("GET", "/task")):
            log.refused(peer, method, path, presented=peer == "10.0.0.2")
    first = lines(caplog)
    assert len(first) == 4
    assert "POST '/rollout' from 10.0.0.2: wrong API key" in first[3]
    assert not scheduled.calls or len(scheduled.calls) == 1
    scheduled.run()
    summary = lines(caplog)[4]
    assert summary.startswith("Refused 2 more request(s)")
    assert "GET '/task' from 10.0.0.1 x1" in summary and "GET '/task' from 10.0.0.2 x1" in summary


def test_a_scanner_gets_a_few_lines_and_a_count_in_bounded_memory(caplog: pytest.LogCaptureFixture) -> None:
    scheduled = Scheduled()
    log = RefusalLog(schedule=scheduled, max_routes=3, max_first_lines=4)
    for n in range(20):  # a new path each time
        log.refused("10.0.0.9", "GET", f"/probe/{n}", presented=False)
    assert len(log._logged) <= 3 and len(log._counts) <= 3  # pyright: ignore[reportPrivateUsage]
    assert len(lines(caplog)) == 4
    scheduled.run()
    summary = lines(caplog)[-1]
    assert summary.startswith("Refused 16 more request(s)") and summary.endswith("and 13 more"), summary
    log.refused("10.0.0.9", "GET", "/probe/99", presented=False)  # a new interval: lines again
    assert "'/probe/99'" in lines(caplog)[-1]


def test_the_path_is_quoted_so_a_newline_cannot_forge_a_line(caplog: pytest.LogCaptureFixture) -> None:
    log = RefusalLog(schedule=Scheduled())
    log.refused("10.0.0.1", "GET", "/x\nWARNING forged", presented=False)
    assert "\n" not in lines(caplog)[0]
