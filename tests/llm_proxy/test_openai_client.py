"""The real ``openai`` client through the proxy: streamed and whole answers, the key, a backend down."""

from __future__ import annotations

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from lightning_attempts.llm_proxy import LlmProxy, serve_proxy

from .conftest import Attempts, StartProxy, attempt_url
from .stand_in_vllm import StandInVllm, prompt_ids, response_ids

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


async def test_a_streamed_completion_arrives_whole_and_its_token_ids_are_recorded(
    start_proxy: StartProxy, attempts: Attempts
) -> None:
    server = await start_proxy()
    attempt = attempts.live()
    async with openai.AsyncOpenAI(base_url=attempt_url(server, attempt, "")[:-1], api_key="unused") as client:
        stream = await client.chat.completions.create(
            model="stand-in", messages=MESSAGES, stream=True, extra_body={"return_token_ids": True}
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    (call,) = server.proxy.calls_of(*attempt)
    backend_ids = [list(ids) for ids in call.response_token_ids or ()]
    assert text == "".join(f"t{token} " for token in backend_ids[0])
    assert backend_ids in ([response_ids("alpha")], [response_ids("beta")])
    assert list(call.prompt_token_ids or ()) == prompt_ids({"messages": MESSAGES})


async def test_plain_v1_with_the_key_works_and_without_it_raises_authentication_error(
    start_proxy: StartProxy, backends: list[StandInVllm]
) -> None:
    server = await start_proxy(api_key="the-key")
    async with openai.AsyncOpenAI(base_url=f"{server.endpoint}/v1", api_key="the-key") as client:
        completion = await client.chat.completions.create(model="stand-in", messages=MESSAGES)
    assert completion.choices[0].message.content
    async with openai.AsyncOpenAI(base_url=f"{server.endpoint}/v1", api_key="not-the-key") as client:
        with pytest.raises(openai.AuthenticationError) as raised:
            await client.chat.completions.create(model="stand-in", messages=MESSAGES)
    assert raised.value.code == "unauthorized"
    assert sum(len(backend.received) for backend in backends) == 1


async def test_a_backend_down_raises_a_server_error_naming_it(attempts: Attempts) -> None:
    server = await serve_proxy(LlmProxy(lambda: ["127.0.0.1:1"], attempts))
    try:
        async with openai.AsyncOpenAI(base_url=f"{server.endpoint}/v1", api_key="x", max_retries=0) as client:
            with pytest.raises(openai.InternalServerError) as raised:
                await client.chat.completions.create(model="stand-in", messages=MESSAGES)
        assert raised.value.status_code == 502 and raised.value.code == "backend_unreachable"
    finally:
        await server.stop()
