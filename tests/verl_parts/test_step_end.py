"""The daemon's LLM proxy at a step's end, beside a real server: nothing left in flight when vLLM sleeps.

What ``AttemptAwareDaemon`` calls (``end_step`` once the batch is done, ``drain`` in
``get_train_data_batch``/``get_test_metrics`` and ``clear_data_and_server``, ``open_step`` at the
next set-up) on an ``AttachedProxy`` serving on the server's loop, in front of a stand-in vLLM
that keeps generating after its client hangs up and whose ``sleep()`` fails under an open request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Iterator

import httpx
import pytest

from lightning_attempts import AttemptAwareServer, AttemptRollout
from lightning_attempts.errors import OptionError
from lightning_attempts.llm_proxy import AttachedProxy
from lightning_attempts.switch.variables import resolve
from lightning_attempts.testing import ManualClock, ServerThread, serve_in_thread

from ..llm_proxy.stand_in_vllm import SleptUnderRequests, StandInVllm
from .test_daemon_proxy import CHAT, TIMEOUT, attempt_url, claim, free_port

Running = tuple[ServerThread[AttemptAwareServer], AttachedProxy, StandInVllm, asyncio.Event]


def running(clock: ManualClock, drain_seconds: float) -> Iterator[Running]:
    server = AttemptAwareServer(
        port=0, task_timeout_seconds=TIMEOUT, clock=clock, llm_drain_timeout_seconds=drain_seconds
    )
    with serve_in_thread(server) as served:
        backend = StandInVllm("alpha")
        served.call(backend.start())
        backend.keeps_generating = True  # agentlightning's patched vLLM: a hang-up does not abort a request
        gate = served.run(asyncio.Event)  # the generation goes on until the test sets it
        backend.gate = gate
        proxy = AttachedProxy(server, lambda: [backend.address], free_port(), TIMEOUT)
        served.call(proxy.start())
        try:
            yield served, proxy, backend, gate
        finally:
            served.run(gate.set)
            served.call(backend.stop())


@pytest.fixture
def patient(clock: ManualClock) -> Iterator[Running]:
    yield from running(clock, 30.0)


@pytest.fixture
def impatient(clock: ManualClock) -> Iterator[Running]:
    yield from running(clock, 0.0)


def batch_with_a_straggler_calling(
    served: ServerThread[AttemptAwareServer],
    proxy: AttachedProxy,
    backend: StandInVllm,
    clock: ManualClock,
    pool: concurrent.futures.ThreadPoolExecutor,
) -> tuple[tuple[str, str], concurrent.futures.Future[httpx.Response]]:
    """A batch of one task: its first attempt calls the LLM (a long generation), times out and is re-claimed; the
    re-claim stores the result. The straggler's call is still generated; the batch is done."""
    server = served.server
    rollout_id = served.call(server.queue_task({"n": 1}))
    straggler = claim(served)
    call = pool.submit(httpx.post, attempt_url(proxy, straggler), json=CHAT, timeout=30)
    served.call(asyncio.wait_for(backend.wait_received(1), TIMEOUT))
    clock.advance(TIMEOUT + 1)
    served.run(lambda: server.store.requeue_expired())
    live = claim(served)
    result = AttemptRollout(rollout_id=rollout_id, attempt_id=live[1], final_reward=1.0)
    assert served.run(lambda: server.store.submit(result, live[1])).status == "ok"
    return straggler, call


def test_the_step_waits_for_a_stragglers_call_and_vllm_then_sleeps_with_none_open(
    patient: Running, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    served, proxy, backend, gate = patient
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        straggler, call = batch_with_a_straggler_calling(served, proxy, backend, clock, pool)
        assert served.run(proxy.end_step) == 1  # the daemon's wait saw the last result
        refused = httpx.post(f"http://127.0.0.1:{proxy.port}/v1/chat/completions", json=CHAT)  # e.g. an old worker
        assert (refused.status_code, refused.json()["error"]["code"]) == (409, "step_ended")
        with pytest.raises(SleptUnderRequests):
            backend.sleep()  # what upstream's daemon lets verl do here
        caplog.set_level(logging.INFO, "lightning_attempts.llm_proxy.draining")
        drained = served.submit(proxy.drain())  # get_train_data_batch's wait
        served.run(gate.set)  # vLLM ends the straggler's generation
        assert (drained.result(TIMEOUT).waited_for, drained.result().cut) == (1, 0)
        assert call.result(TIMEOUT).status_code == 200
    backend.sleep()  # nothing open
    stats = served.run(proxy.stats)
    assert (stats["in_flight"], stats["in_flight_at_step_end"], stats["calls_cut"]) == (0, 1, 0)
    assert stats["refused_by_reason"]["step_ended"] == 1
    assert any(straggler[1] in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    served.run(proxy.open_step)  # the next batch is set up
    assert httpx.post(f"http://127.0.0.1:{proxy.port}/v1/chat/completions", json=CHAT).status_code != 409


def test_past_llm_drain_timeout_seconds_the_call_is_cut_and_the_warning_says_vllm_may_still_generate_it(
    impatient: Running, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    served, proxy, backend, _ = impatient
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        straggler, call = batch_with_a_straggler_calling(served, proxy, backend, clock, pool)
        drained = served.call(proxy.drain())
        answer = call.result(TIMEOUT)
    assert (drained.waited_for, drained.cut, drained.left) == (1, 1, 0)
    assert (answer.status_code, answer.json()["error"]["code"]) == (409, "step_ended")
    assert served.run(proxy.stats)["in_flight"] == 0
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING and "cut" in r.getMessage()]
    assert straggler[1] in warning.getMessage() and "llm_drain_timeout_seconds=0" in warning.getMessage()
    assert "may still be generating" in warning.getMessage()
    with pytest.raises(SleptUnderRequests):  # which is why the default waits: vLLM does not abort on a hang-up
        backend.sleep()


def test_the_bound_is_an_option_of_every_server_verl_builds() -> None:
    assert resolve(environ={"LIGHTNING_ATTEMPTS_LLM_DRAIN_TIMEOUT_SECONDS": "45"})["llm_drain_timeout_seconds"] == 45
    assert AttemptAwareServer(port=0).options.llm_drain_timeout_seconds == 120.0
    with pytest.raises(OptionError, match="LIGHTNING_ATTEMPTS_LLM_DRAIN_TIMEOUT_SECONDS"):
        resolve(environ={"LIGHTNING_ATTEMPTS_LLM_DRAIN_TIMEOUT_SECONDS": "-1"})
