"""The trainer's side: ``wait_for_rollouts`` and ``poll_completed_rollout`` wake when results are stored."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from lightning_attempts import AttemptAwareServer
from lightning_attempts.testing import ServerThread

Served = ServerThread[AttemptAwareServer]


def complete(served: Served, rollout_id: str, reward: float = 1.0) -> None:
    """Claim the next task (it must be ``rollout_id``) and post its result, over HTTP."""
    with httpx.Client(base_url=served.endpoint) as http:
        task = http.get("/task").json()["task"]
        assert task["rollout_id"] == rollout_id
        body = {"rollout_id": rollout_id, "attempt_id": task["attempt_id"], "final_reward": reward}
        assert http.post("/rollout", json=body).json()["status"] == "ok"


def flush(served: Served) -> None:
    """Let the server's loop run whatever a store change scheduled."""
    for _ in range(3):
        served.run(lambda: None)


def ids(rollouts: list[Any]) -> list[str]:
    return [rollout.rollout_id for rollout in rollouts]


def test_wait_for_rollouts_returns_when_the_last_is_stored(served: Served) -> None:
    server = served.server
    first, second = (served.call(server.queue_task(i)) for i in range(2))
    waiting = served.submit(server.wait_for_rollouts([first, second]))
    complete(served, first)
    flush(served)
    assert not waiting.done()  # one of two
    complete(served, second)
    assert ids(waiting.result(timeout=10)) == [first, second]
    # Not taken: the trainer still retrieves them.
    assert sorted(ids(served.call(server.retrieve_completed_rollouts()))) == sorted([first, second])


def test_wait_for_rollouts_with_a_timeout_returns_what_was_completed(served: Served) -> None:
    server = served.server
    done, pending = (served.call(server.queue_task(i)) for i in range(2))
    complete(served, done)
    assert ids(served.call(server.wait_for_rollouts([done, pending], timeout=0.2))) == [done]
    assert ids(served.call(server.wait_for_rollouts([done, pending], timeout=0))) == [done]


def test_wait_for_rollouts_of_finished_tasks_returns_at_once(served: Served) -> None:
    server = served.server
    done, cancelled = (served.call(server.queue_task(i)) for i in range(2))
    complete(served, done)
    waiting = served.submit(server.wait_for_rollouts([done, cancelled, done]))
    served.call(server.cancel_pending())  # cancelled is finished too, with nothing stored
    assert ids(waiting.result(timeout=10)) == [done]
    served.call(server.retrieve_completed_rollouts())
    assert served.call(server.wait_for_rollouts([done])) == []  # finished, already taken


def test_wait_for_rollouts_refuses_unknown_ids(served: Served) -> None:
    with pytest.raises(ValueError, match="rollout-nope"):
        served.call(served.server.wait_for_rollouts(["rollout-nope"]))


def test_poll_completed_rollout_wakes_when_stored_without_polling(served: Served) -> None:
    """Upstream checks once a second; this checks when the rollout is stored (and once at first)."""
    server = served.server
    rid = served.call(server.queue_task("x"))
    checks: list[str] = []
    take = server.get_completed_rollout

    async def counted(rollout_id: str) -> Any:
        checks.append(rollout_id)
        return await take(rollout_id)

    server.get_completed_rollout = counted  # type: ignore[method-assign]
    waiting = served.submit(server.poll_completed_rollout(rid))
    time.sleep(1.5)  # upstream would check twice meanwhile
    complete(served, rid, reward=0.5)
    rollout = waiting.result(timeout=10)
    assert rollout is not None and (rollout.rollout_id, rollout.final_reward) == (rid, 0.5)
    assert checks == [rid, rid]
    assert served.call(server.retrieve_completed_rollouts()) == []  # taken, as upstream takes it


def test_poll_completed_rollout_times_out_with_none(served: Served) -> None:
    rid = served.call(served.server.queue_task("x"))
    assert served.call(served.server.poll_completed_rollout(rid, timeout=0.2)) is None
