"""The client's protocol steps on their own: generators driven by hand with made-up answers, no I/O at all."""

from __future__ import annotations

import contextvars
import os
import socket
from collections.abc import Generator
from typing import Any, TypeVar

import httpx
import pytest

from lightning_attempts import AttemptAwareClient, AttemptRollout, AttemptTask, OptionError
from lightning_attempts.client.claims import Claim, ClaimBook
from lightning_attempts.client.protocol import Send, Steps, Upstream, Watch, poll_pause
from lightning_attempts.models import WAIT_HEADER

T = TypeVar("T")
ENDPOINT = "http://trainer.test"


class FakeClient:
    """What the steps read of ``AttemptAwareClient``."""

    endpoint = ENDPOINT
    timeout = 10.0
    poll_wait: float | None = 20.0
    submit_attempts = 5
    heartbeat_fraction: float | None = 1 / 3

    def __init__(self) -> None:
        self.book = ClaimBook(self)

    def attempt_id_for(self, rollout: Any) -> str | None:
        return self.book.attempt_id_for(rollout)


@pytest.fixture
def client() -> FakeClient:
    return FakeClient()


@pytest.fixture
def steps(client: FakeClient) -> Steps:
    return Steps(client, client.book, task_uri="/task", keyed=False)


def response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers, request=httpx.Request("GET", ENDPOINT))


def first(step: Generator[Any, Any, T]) -> Any:
    return next(step)


def finish(step: Generator[Any, Any, T], answer: Any) -> T:
    """Send ``answer`` to ``step`` and expect it to return."""
    with pytest.raises(StopIteration) as done:
        step.send(answer)
    return done.value.value


def task(rollout_id: str = "r1", attempt_id: str = "a1", lease: float | None = None) -> dict[str, Any]:
    return {"rollout_id": rollout_id, "input": "x", "attempt_id": attempt_id, "claim_sequence_id": 1, "num_claims": 1,
            "lease_seconds": lease}  # fmt: skip


def test_the_long_poll_asks_to_be_held_and_to_be_leased(steps: Steps) -> None:
    step = steps.get_json(ENDPOINT + "/task", 5.0)
    request = first(step)
    assert isinstance(request, Send)
    assert request.params is not None and request.params.pop("worker") == f"{socket.gethostname()}:{os.getpid()}"
    assert (request.method, request.params, request.timeout) == ("GET", {"heartbeats": 1, "wait": 20.0}, 30.0)
    body = finish(step, response(200, {"is_available": True, "task": task()}))
    assert body is not None and body["task"]["attempt_id"] == "a1"


def test_after_an_empty_answer_the_loop_sleeps_what_is_left_of_the_shorter_wait(
    steps: Steps, client: FakeClient
) -> None:
    step = steps.get_json(ENDPOINT + "/task", 5.0)
    first(step)
    finish(step, response(200, {"is_available": False, "task": None}, {WAIT_HEADER: "2"}))
    assert poll_pause(client) == pytest.approx(2.0, abs=0.5)  # the server would hold 2 s, less the poll's own time
    step = steps.get_json(ENDPOINT + "/task", 5.0)
    first(step)
    finish(step, response(200, {"is_available": False, "task": None}))  # an unpatched server: no header
    assert poll_pause(client) is None  # upstream's poll_interval applies


def test_a_failed_poll_answers_none(steps: Steps) -> None:
    step = steps.get_json(ENDPOINT + "/task", 5.0)
    first(step)
    with pytest.raises(StopIteration) as done:  # the step swallows the failure and returns
        step.throw(httpx.ConnectError("refused"))
    assert done.value.value is None


def test_a_claim_is_remembered_with_its_attempt_and_heartbeaten_under_a_lease(steps: Steps, client: FakeClient) -> None:
    def run() -> tuple[Any, Any]:
        get = steps.get_json(ENDPOINT + "/task", 5.0)
        first(get)
        finish(get, response(200, {"is_available": True, "task": task(lease=6.0)}))
        poll = steps.poll()
        assert first(poll) == Upstream("poll_next_task", "poll_next_task_async")
        watch = poll.send(AttemptTask(rollout_id="r1", input="x"))  # upstream parsed it without the attempt
        assert isinstance(watch, Watch)
        return watch, finish(poll, None)

    watch, claimed = contextvars.copy_context().run(run)
    assert watch.claim == Claim("r1", "a1", 1, 6.0)
    assert (claimed.attempt_id, claimed.claim_sequence_id) == ("a1", 1)
    assert client.book.open_claims() == [Claim("r1", "a1", 1, 6.0)]


def test_a_submission_carries_the_claims_attempt_and_forgets_it(steps: Steps, client: FakeClient) -> None:
    client.book.add(AttemptTask.model_validate(task()))
    step = steps.submit(AttemptRollout(rollout_id="r1", final_reward=1.0))
    call = first(step)
    assert isinstance(call, Upstream) and call.method == "post_rollout"
    assert call.arg.attempt_id == "a1"
    assert finish(step, {"status": "ok"}) == {"status": "ok"}
    assert client.book.open_claims() == []


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (response(200, {"status": "ok"}), {"status": "ok"}),
        (response(409, {"status": "dropped", "reason": "superseded"}), {"status": "dropped", "reason": "superseded"}),
        (response(400, {"reason": "attempt_required"}), {"reason": "attempt_required"}),
        (response(422, {"detail": []}), None),
    ],
)
def test_a_post_is_retried_by_the_transport_and_answers_drops_without_raising(
    steps: Steps, answer: httpx.Response, expected: dict[str, Any] | None
) -> None:
    step = steps.post_json(ENDPOINT + "/rollout", {"rollout_id": "r1", "attempt_id": "a1"})
    request = first(step)
    assert isinstance(request, Send) and request.attempts == 5  # submit_attempts
    assert finish(step, answer) == expected


def test_a_server_without_release_is_not_asked_again(steps: Steps) -> None:
    step = steps.release(Claim("r1", "a1"))
    request = first(step)
    assert isinstance(request, Send) and request.url == ENDPOINT + "/release"
    assert finish(step, response(404)) is False
    with pytest.raises(StopIteration) as done:  # no request at all the second time
        next(steps.release(Claim("r2", "a2")))
    assert done.value.value is False


def test_a_heartbeat_answered_409_marks_the_claim_lost(steps: Steps, client: FakeClient) -> None:
    claim = client.book.add(AttemptTask.model_validate(task()))
    assert claim is not None and client.book.is_current("a1")
    step = steps.beat(claim)
    first(step)
    assert finish(step, response(409, {"status": "stale", "reason": "superseded"})) is False
    assert not client.book.is_current("a1")


def test_a_heartbeat_that_fails_in_transport_does_not_lose_the_claim(steps: Steps, client: FakeClient) -> None:
    claim = client.book.add(AttemptTask.model_validate(task()))
    assert claim is not None
    step = steps.beat(claim)
    first(step)
    with pytest.raises(StopIteration) as done:
        step.throw(httpx.ConnectError("refused"))
    assert done.value.value is True and client.book.is_current("a1")


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, 2.0])
def test_a_heartbeat_fraction_outside_zero_to_one_is_refused_when_the_client_is_built(fraction: float) -> None:
    """Above 1 a live worker would lose every lease; at 0 or below it would flood the server with heartbeats."""
    with pytest.raises(OptionError, match=r"heartbeat_fraction must be in \(0, 1\]"):
        AttemptAwareClient(ENDPOINT, heartbeat_fraction=fraction)


@pytest.mark.parametrize("fraction", [None, 0.1, 1 / 3, 1.0])
def test_a_heartbeat_fraction_in_range_or_none_is_taken(fraction: float | None) -> None:
    client = AttemptAwareClient(ENDPOINT, heartbeat_fraction=fraction)
    try:
        assert client.heartbeat_fraction == fraction
    finally:
        client.close()
