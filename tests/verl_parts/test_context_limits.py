"""How the daemon's LLM proxy learns the limits over-long calls are held to, on each release, without verl."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lightning_attempts import AttemptAwareServer
from lightning_attempts.llm_proxy import AttachedProxy
from lightning_attempts.llm_proxy.context import ContextGuard, TrainerLimits
from lightning_attempts.testing import ManualClock, ServerThread, serve_in_thread
from lightning_attempts.verl.context_limits import (
    learn_from_batch_call,
    own_tokenizer,
    rows_are_calls,
    set_up_batch,
    trainer_limits,
)
from lightning_attempts.verl.step_metrics import TRAIN_PREFIX, StepWindow, step_metrics

from ..llm_proxy.stand_in_vllm import StandInVllm, prompt_ids
from .test_daemon_proxy import free_port
from .test_step_metrics import proxy_stats, stats

CONTEXT = 200


class CharTokenizer:
    def apply_chat_template(self, conversation: Any, *args: Any, **kwargs: Any) -> list[int]:
        return prompt_ids({"messages": conversation})

    def encode(self, text: str, *args: Any, **kwargs: Any) -> list[int]:
        return [ord(char) for char in text]


def test_the_trainer_limits_come_from_get_train_data_batchs_arguments_on_each_release() -> None:
    assert trainer_limits((64, 16, "cpu"), {}) == TrainerLimits(64, 16)  # 0.1.2, 0.2.2: by position
    assert trainer_limits((), {"max_prompt_length": 64, "max_response_length": 16, "device": "cpu", "global_steps": 1})
    assert trainer_limits((64,), {}) is None and trainer_limits((), {"max_prompt_length": True}) is None
    assert rows_are_calls(SimpleNamespace()) and rows_are_calls(SimpleNamespace(trace_aggregator={}))
    assert not rows_are_calls(SimpleNamespace(trace_aggregator={"level": "trajectory"}))  # 0.3.0: a row, many calls


class Uncopyable(CharTokenizer):
    def __deepcopy__(self, memo: Any) -> Any:
        raise TypeError("not copyable")


def test_the_proxy_counts_with_a_copy_of_the_trainers_tokenizer_when_it_can() -> None:
    trainers = CharTokenizer()
    copied = own_tokenizer(trainers)
    assert isinstance(copied, CharTokenizer) and copied is not trainers  # its own, for its own thread
    uncopyable = Uncopyable()
    assert own_tokenizer(uncopyable) is uncopyable and own_tokenizer(None) is None


@pytest.fixture
def running(clock: ManualClock) -> Iterator[tuple[ServerThread[AttemptAwareServer], AttachedProxy, StandInVllm]]:
    server = AttemptAwareServer(port=0, task_timeout_seconds=10.0, clock=clock)
    with serve_in_thread(server) as served:
        backend = StandInVllm("alpha")
        backend.max_model_len = CONTEXT
        served.call(backend.start())
        proxy = AttachedProxy(server, lambda: [backend.address], free_port(), 10.0)
        proxy.proxy.context.tokenizer = CharTokenizer()  # as the daemon gives it its own
        served.call(proxy.start())
        try:
            yield served, proxy, backend
        finally:
            served.call(backend.stop())


async def set_up(guard: ContextGuard, addresses: list[str], is_train: bool) -> None:
    """``set_up_batch`` as the daemon calls it, then wait for what it asked in the background."""
    task = set_up_batch(guard, addresses, is_train)
    if task is not None:
        await task


def chat(length: int, max_tokens: int) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "x" * length}], "max_tokens": max_tokens}


def test_the_daemons_proxy_learns_the_context_at_set_up_and_the_trainers_limits_after_a_training_step(
    running: tuple[ServerThread[AttemptAwareServer], AttachedProxy, StandInVllm],
) -> None:
    served, proxy, backend = running
    guard = proxy.proxy.context
    url = f"http://127.0.0.1:{proxy.port}/v1/chat/completions"
    with httpx.Client(timeout=30) as http:
        served.call(set_up(guard, [backend.address], True))  # step 1 (training): the model's context only
        assert guard.model_contexts[""] == CONTEXT and guard.trainer is None
        assert http.post(url, json=chat(100, 500)).status_code == 200
        assert backend.received[-1].json()["max_tokens"] == CONTEXT - 100
        assert http.post(url, json=chat(CONTEXT, 5)).status_code == 400 and backend.too_long == 0
        daemon = SimpleNamespace(trace_aggregator={"level": "transition"})
        served.run(lambda: learn_from_batch_call(guard, daemon, (64, 16, "cpu"), {}))  # get_train_data_batch
        served.call(set_up(guard, [backend.address], True))  # step 2: the trainer's row lengths too
        refused = http.post(url, json=chat(100, 5))
        assert refused.status_code == 400 and "max_prompt_length of 64" in refused.json()["error"]["message"]
        assert http.post(url, json=chat(50, 500)).status_code == 200
        assert backend.received[-1].json()["max_tokens"] == 16
        served.call(set_up(guard, [backend.address], False))  # validation: its rows are not trained on
        assert http.post(url, json=chat(100, 500)).status_code == 200
        assert backend.received[-1].json()["max_tokens"] == CONTEXT - 100
        after = served.run(proxy.stats)
        exposed = http.get(f"{served.endpoint}/metrics").text
    families = text_string_to_metric_families(exposed)
    samples = {(s.name, tuple(s.labels.items())): s.value for f in families for s in f.samples}
    assert samples[("lightning_attempts_llm_proxy_context_capped_total", ())] == 3
    assert samples[("lightning_attempts_llm_proxy_context_refused_prompt_total", ())] == 1
    assert samples[("lightning_attempts_llm_proxy_refused_total", (("reason", "context_length_exceeded"),))] == 2
    assert backend.too_long == 0
    window = StepWindow(stats(), queued_at=0.0, queued_monotonic=0.0, proxy_before=proxy_stats(0, 0, []))
    metrics = step_metrics(window, stats(), [], 0, TRAIN_PREFIX, proxy_after=after)
    names = ("llm_calls_capped", "llm_calls_refused_too_long", "llm_calls_refused_prompt_too_long")
    assert [metrics[f"attempts/{name}"] for name in names] == [3.0, 1.0, 1.0]
    assert metrics["attempts/llm_max_tokens_cut"] == (500 - 100) + (500 - 16) + (500 - 100)
    assert metrics["attempts/llm_prompts_tokenized"] == 5.0 and metrics["attempts/llm_tokenize_s"] > 0


def test_a_backend_that_does_not_say_its_context_changes_nothing(clock: ManualClock) -> None:
    server = AttemptAwareServer(port=0, task_timeout_seconds=10.0, clock=clock)
    with serve_in_thread(server) as served:
        backend = StandInVllm("alpha")  # its /v1/models names no max_model_len
        served.call(backend.start())
        proxy = AttachedProxy(server, lambda: [backend.address], free_port(), 10.0)
        proxy.proxy.context.tokenizer = CharTokenizer()
        served.call(proxy.start())
        try:
            served.call(set_up(proxy.proxy.context, [backend.address], True))
            served.call(set_up(proxy.proxy.context, [backend.address], True))  # asked once
            with httpx.Client(timeout=30) as http:
                url = f"http://127.0.0.1:{proxy.port}/v1/chat/completions"
                assert http.post(url, json=chat(100, 500)).status_code == 200
            assert backend.received[-1].json()["max_tokens"] == 500
            assert [r.path for r in backend.received].count("/v1/models") == 1
            assert served.run(proxy.stats)["context_tokenized"] == 0
        finally:
            served.call(backend.stop())


def test_without_llm_trainer_limits_only_the_models_context_holds(
    running: tuple[ServerThread[AttemptAwareServer], AttachedProxy, StandInVllm],
) -> None:
    served, proxy, backend = running
    guard = proxy.proxy.context
    url = f"http://127.0.0.1:{proxy.port}/v1/chat/completions"
    daemon = SimpleNamespace(trace_aggregator={"level": "transition"})
    with httpx.Client(timeout=30) as http:
        served.call(set_up(guard, [backend.address], True))
        served.run(lambda: learn_from_batch_call(guard, daemon, (64, 16, "cpu"), {}, enabled=False))
        served.call(set_up(guard, [backend.address], True))  # step 2 of a trainer that turned them off
        assert guard.trainer is None
        assert http.post(url, json=chat(100, 500)).status_code == 200  # over max_prompt_length: generated
        assert backend.received[-1].json()["max_tokens"] == CONTEXT - 100  # capped to the context only
