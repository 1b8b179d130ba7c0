"""Over-long calls, against a stand-in vLLM that enforces its context as vLLM does (400 past ``max_model_len``).

The proxy learns the context from the backend's ``/v1/models``, counts a call's prompt tokens with the
tokenizer it is given (here the stand-in's own: one token per character), and caps ``max_tokens`` to fit or
refuses the call, before any backend, with vLLM's ``context_length_exceeded`` 400.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from lightning_attempts.llm_proxy import LlmProxy, ProxyServer, context
from lightning_attempts.llm_proxy.context import ContextGuard, TrainerLimits

from .conftest import Attempts, StartProxy, attempt_url
from .stand_in_vllm import StandInVllm, prompt_ids

CONTEXT = 100


class CharTokenizer:
    """The stand-in's tokenizer (one id per character of the messages' contents), noting the threads it ran on."""

    def __init__(self, during: Callable[[], None] = lambda: None) -> None:
        self.threads: set[int] = set()
        self.calls: list[dict[str, Any]] = []
        self._during = during

    def apply_chat_template(self, conversation: Any, *args: Any, **kwargs: Any) -> list[int]:
        self.threads.add(threading.get_ident())
        self.calls.append({"messages": conversation, **kwargs})
        self._during()
        return prompt_ids({"messages": conversation})

    def encode(self, text: str, *args: Any, **kwargs: Any) -> list[int]:
        self.threads.add(threading.get_ident())
        return [ord(char) for char in text]


def chat(length: int, **fields: Any) -> dict[str, Any]:
    return {"model": "stand-in", "messages": [{"role": "user", "content": "x" * length}], **fields}


async def guarded(
    start_proxy: StartProxy, backend: StandInVllm, tokenizer: Any = None, context: int = CONTEXT
) -> tuple[str, LlmProxy]:
    """A proxy before ``backend`` (which enforces ``context``), its guard given a tokenizer and the context learnt:
    its plain chat URL, and the proxy."""
    server = await guarded_server(start_proxy, backend, tokenizer, context)
    return f"{server.endpoint}/v1/chat/completions", server.proxy


async def guarded_server(
    start_proxy: StartProxy, backend: StandInVllm, tokenizer: Any = None, context: int = CONTEXT
) -> ProxyServer:
    backend.max_model_len = context
    server = await start_proxy(addresses=[backend.address])
    server.proxy.context.tokenizer = tokenizer if tokenizer is not None else CharTokenizer()
    assert await server.proxy.context.learn_model_context([backend.address])
    return server


async def test_max_tokens_that_would_overflow_the_context_are_capped_and_the_rest_of_the_body_kept(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    url, proxy = await guarded(start_proxy, backends[0])
    extra = {"temperature": 0.25, "tools": [{"type": "function", "function": {"name": "f"}}], "logprobs": True}
    for field in ("max_tokens", "max_completion_tokens"):
        answer = await http.post(url, json=chat(60, **{field: 80}, **extra))
        assert answer.status_code == 200, answer.text
        sent = backends[0].received[-1].json()
        assert sent == chat(60, **{field: 40}, **extra)  # only the cap changed, nothing else of the body
        assert int(backends[0].received[-1].headers["content-length"]) == len(backends[0].received[-1].body)
    assert backends[0].too_long == 0
    stats = proxy.stats()
    assert (stats["context_capped"], stats["context_capped_tokens"], stats["context_tokenized"]) == (2, 80, 2)
    assert stats["model_context"] == CONTEXT and stats["context_tokenize_seconds"] > 0


async def test_a_call_that_cannot_fit_is_refused_as_vllm_refuses_it_before_any_backend(
    start_proxy: StartProxy, backends: list[StandInVllm], attempts: Attempts, http: httpx.AsyncClient
) -> None:
    url, proxy = await guarded(start_proxy, backends[0])
    received = len(backends[0].received)
    answer = await http.post(url, json=chat(120, max_tokens=80))
    assert answer.status_code == 400
    assert answer.json() == {
        "error": {
            "message": "This model's maximum context length is 100 tokens. However, you requested 200 tokens "
            "(120 in the messages, 80 in the completion). Please reduce the length of the messages or completion.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    client = openai.AsyncOpenAI(base_url=url.removesuffix("/chat/completions"), api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError) as raised:  # what agents already catch
        await client.chat.completions.create(model="stand-in", messages=[{"role": "user", "content": "x" * 100}])
    assert raised.value.code == "context_length_exceeded"
    await client.close()
    assert len(backends[0].received) == received and backends[0].too_long == 0
    stats = proxy.stats()
    assert stats["context_refused"] == 2 and stats["refused_by_reason"] == {"context_length_exceeded": 2}
    assert stats["forwarded"] == 0


async def test_a_small_call_is_not_tokenized_nor_changed(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    url, proxy = await guarded(start_proxy, backends[0], context=100_000)
    raw = b'{"model": "stand-in", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 30}'
    answer = await http.post(url, content=raw, headers={"content-type": "application/json"})
    assert answer.status_code == 200 and backends[0].received[-1].body == raw  # byte for byte
    assert proxy.stats()["context_tokenized"] == 0


async def test_the_trainer_limits_apply_to_training_steps_only(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    url, proxy = await guarded(start_proxy, backends[0], context=1000)
    proxy.context.trainer = TrainerLimits(max_prompt_length=50, max_response_length=10)
    over = await http.post(url, json=chat(60, max_tokens=5))
    assert over.status_code == 400 and over.json()["error"]["code"] == "context_length_exceeded"
    assert "max_prompt_length of 50" in over.json()["error"]["message"]
    assert (await http.post(url, json=chat(40, max_tokens=20))).status_code == 200
    assert backends[0].received[-1].json()["max_tokens"] == 10  # verl would truncate the response to 10
    assert (await http.post(url, json=chat(40))).status_code == 200
    assert backends[0].received[-1].json()["max_tokens"] == 10  # unset: vLLM would fill the context
    stats = proxy.stats()
    assert (stats["context_refused_prompt"], stats["context_capped"], stats["forwarded"]) == (1, 2, 2)
    proxy.context.training = False  # validation: rows not trained on, only the model's context holds
    assert (await http.post(url, json=chat(60, max_tokens=20))).status_code == 200
    assert backends[0].received[-1].json()["max_tokens"] == 20


async def test_tokenizing_runs_off_the_loop_and_liveness_is_asked_again_after_it(
    start_proxy: StartProxy, backends: list[StandInVllm], attempts: Attempts, http: httpx.AsyncClient
) -> None:
    live = attempts.live()
    tokenizer = CharTokenizer(during=lambda: attempts.end(live, "superseded"))
    server = await guarded_server(start_proxy, backends[0], tokenizer)
    received = len(backends[0].received)
    answer = await http.post(attempt_url(server, live), json=chat(60, max_tokens=80))
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "superseded"
    assert len(backends[0].received) == received
    assert tokenizer.threads and threading.get_ident() not in tokenizer.threads
    assert server.proxy.stats()["context_tokenized"] == 1


async def test_completions_and_unknown_limits(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    guard = ContextGuard(CharTokenizer(), model_context=CONTEXT)
    checked = await guard.check("/v1/completions", json.dumps({"prompt": "y" * 90}).encode())
    assert json.loads(checked.body)["max_tokens"] == 10  # vLLM's default of 16 would overflow
    refused = await guard.check("/v1/completions", json.dumps({"prompt": list(range(100))}).encode())
    assert refused.refusal is not None and refused.param == "prompt"
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x"}}]}
    body = json.dumps({"messages": [image], "max_tokens": 500}).encode()
    assert (await guard.check("/v1/chat/completions", body)).body == body  # not countable here: unchanged
    guard.close()
    # A backend that does not say its context: nothing changes from today.
    server = await start_proxy(addresses=[backends[1].address])
    server.proxy.context.tokenizer = CharTokenizer()
    assert not await server.proxy.context.learn_model_context([backends[1].address])
    answer = await http.post(f"{server.endpoint}/v1/chat/completions", json=chat(60, max_tokens=80))
    assert answer.status_code == 200 and backends[1].received[-1].json()["max_tokens"] == 80
    assert server.proxy.stats()["context_tokenized"] == 0


async def test_a_large_body_is_read_and_rewritten_off_the_loop_and_a_busy_guard_lets_calls_through(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, proxy = await guarded(start_proxy, backends[0], context=200_000)
    large = chat(150_000, max_tokens=80_000, tools=[{"type": "function", "function": {"name": "g"}}])
    assert len(json.dumps(large)) > context.LOOP_BYTES
    assert (await http.post(url, json=large)).status_code == 200
    assert backends[0].received[-1].json() == {**large, "max_tokens": 50_000}
    monkeypatch.setattr(context, "MAX_WAITING", 0)  # as if 64 calls were waiting to be tokenized
    assert (await http.post(url, json=chat(60, max_tokens=500_000))).status_code == 400  # the backend's own 400
    assert backends[0].too_long == 1
    stats = proxy.stats()
    assert (stats["context_unchecked_busy"], stats["context_capped"]) == (1, 1)
