"""An attempt's streamed call is asked for its token ids (vLLM 0.10.2+ streams them only when asked), so that the
proxy records them; every other call reaches the backend as it was sent."""

from __future__ import annotations

import json

import httpx
import pytest

from lightning_attempts.llm_proxy.token_request import asking_for_token_ids

from .conftest import CHAT, Attempts, StartProxy, attempt_url
from .stand_in_vllm import StandInVllm, prompt_ids, response_ids

STREAM = {**CHAT, "stream": True}


@pytest.mark.parametrize(
    ("body", "asked"),
    [
        (b'{"model": "m", "stream": true}', b'{"return_token_ids":true,"model": "m", "stream": true}'),
        (b' \n{ "stream":true }', b' \n{ "return_token_ids":true,"stream":true }'),
        (b'{"stream": false}', None),
        (b'{"stream": true, "return_token_ids": false}', None),  # the agent's word stands
        (b'{"stream" : true, "return_token_ids" :true}', None),
        (b'{"messages": [{"content": "say \\"stream\\": true"}]}', None),  # an escaped quote is content
        (b'[{"stream": true}]', None),  # not an object
        (b"\x1f\x8b\x08...", None),  # compressed
    ],
)
def test_only_a_streamed_completion_that_says_nothing_of_it_is_asked(body: bytes, asked: bytes | None) -> None:
    for path in ("/v1/chat/completions", "/v1/completions"):
        assert asking_for_token_ids(path, body) == (asked if asked is not None else body)
        if asked is not None:
            assert json.loads(asked) == {"return_token_ids": True, **json.loads(body)}
    assert asking_for_token_ids("/v1/embeddings", body) == body


async def test_an_attempts_stream_is_asked_for_its_ids_and_records_them(
    start_proxy: StartProxy, attempts: Attempts, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy(addresses=[backends[0].address])
    attempt = attempts.live()
    answer = await http.post(attempt_url(server, attempt), json=STREAM)
    assert answer.status_code == 200 and b'"token_ids"' in answer.content  # vLLM's chunks, as it sends them
    (sent,) = backends[0].received
    assert sent.json() == {"return_token_ids": True, **STREAM}
    (call,) = server.proxy.calls_of(*attempt)
    assert call.streamed and list(call.prompt_token_ids or ()) == prompt_ids(CHAT)
    assert [list(ids) for ids in call.response_token_ids or ()] == [response_ids(backends[0].name)]


async def test_plain_whole_and_declining_calls_reach_the_backend_as_sent(
    start_proxy: StartProxy, attempts: Attempts, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy(addresses=[backends[0].address])
    attempt = attempts.live()
    bodies = [
        (f"{server.endpoint}/v1/chat/completions", json.dumps(STREAM).encode()),  # plain: as upstream forwards it
        (attempt_url(server, attempt), json.dumps(CHAT).encode()),  # whole: the instrumentation's ids come anyway
        (attempt_url(server, attempt), json.dumps({**STREAM, "return_token_ids": False}).encode()),
    ]
    for url, body in bodies:
        assert (await http.post(url, content=body, headers={"content-type": "application/json"})).status_code == 200
    assert [received.body for received in backends[0].received] == [body for _, body in bodies]


async def test_a_vllm_before_0_10_2_streams_no_ids_asked_or_not_and_nothing_is_recorded_of_them(
    start_proxy: StartProxy, attempts: Attempts, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy(addresses=[backends[0].address])
    backends[0].streams_ids = False
    attempt = attempts.live()
    assert (await http.post(attempt_url(server, attempt), json=STREAM)).status_code == 200
    (call,) = server.proxy.calls_of(*attempt)
    assert call.streamed and (call.prompt_token_ids, call.response_token_ids) == (None, None)
