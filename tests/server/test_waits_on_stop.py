"""Every wait on the server ends when the server stops: ``wait_for_rollouts`` and ``poll_completed_rollout`` raise.

Upstream's ``poll_completed_rollout`` raises ``RuntimeError: Store not initialized`` within
about a second of ``stop()`` (it checks every second); these wait on completion futures, which
the server must not drop unresolved when it stops. (The verl daemon's wait, built on them, is
in ``tests/verl/test_daemon.py``.)
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from lightning_attempts import AttemptAwareServer
from lightning_attempts.testing import ServerThread

Served = ServerThread[AttemptAwareServer]


def parked(served: Served, wait: Callable[[str], Coroutine[Any, Any, Any]]) -> concurrent.futures.Future[Any]:
    """``wait(rollout_id)`` for a queued task, on the server's loop, once it waits."""
    rollout_id = served.call(served.server.queue_task("x"))
    waiting = served.submit(wait(rollout_id))
    for _ in range(3):  # let the loop run the waiter up to its wait
        served.run(lambda: None)
    assert not waiting.done()
    return waiting


@pytest.mark.parametrize("which", ["wait_for_rollouts", "poll_completed_rollout"])
@pytest.mark.parametrize("timeout", [None, 3600.0])
def test_a_wait_raises_when_the_server_stops(served: Served, which: str, timeout: float | None) -> None:
    server = served.server
    waits: dict[str, Callable[[str], Coroutine[Any, Any, Any]]] = {
        "wait_for_rollouts": lambda rid: server.wait_for_rollouts([rid], timeout=timeout),
        "poll_completed_rollout": lambda rid: server.poll_completed_rollout(rid, timeout=timeout),
    }
    waiting = parked(served, waits[which])
    served.call(server.stop())
    with pytest.raises(RuntimeError, match="stopped"):
        waiting.result(timeout=10)  # without the fix: still waiting (TimeoutError)


def test_a_wait_begun_after_the_stop_raises_at_once(served: Served) -> None:
    server = served.server
    rollout_id = served.call(server.queue_task("x"))
    served.call(server.stop())
    for wait in (server.wait_for_rollouts([rollout_id]), server.poll_completed_rollout(rollout_id)):
        with pytest.raises(RuntimeError):
            served.call(wait, timeout=10)
