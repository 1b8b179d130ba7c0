"""Plain ``/v1`` calls reach a backend as sent (method, path, query, body, end-to-end headers), answers unchanged."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest

from lightning_attempts.llm_proxy import LlmProxy, serve_proxy

from .conftest import CHAT, Attempts, StartProxy
from .stand_in_vllm import StandInVllm


async def test_a_call_reaches_a_backend_as_sent_minus_hop_by_hop_headers_and_host(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy()
    body = json.dumps(CHAT).encode()
    headers = {
        "content-type": "application/json",
        "x-trace": "kept",
        "connection": "keep-alive, x-hop",
        "x-hop": "named by Connection",
        "keep-alive": "timeout=5",
        "te": "trailers",
        "authorization": "Bearer vllm-key",
    }
    answer = await http.post(f"{server.endpoint}/v1/chat/completions?x=1&y=%2F", content=body, headers=headers)
    assert answer.status_code == 200
    (received,) = [r for backend in backends for r in backend.received]
    assert (received.method, received.path, received.query, received.body) == (
        "POST",
        "/v1/chat/completions",
        b"x=1&y=%2F",
        body,
    )
    assert received.headers["x-trace"] == "kept"
    assert received.headers["authorization"] == "Bearer vllm-key"  # no proxy key: forwarded as upstream does
    assert received.headers["host"] == next(b.address for b in backends if b.received)
    for hop in ("x-hop", "keep-alive", "te"):
        assert hop not in received.headers
    assert received.headers["user-agent"].startswith("python-httpx")  # the client's own, not aiohttp's


async def test_the_proxy_adds_no_header_of_its_own(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy()
    await http.post(f"{server.endpoint}/v1/chat/completions", content=json.dumps(CHAT).encode())
    (received,) = [r for backend in backends for r in backend.received]
    assert "content-type" not in received.headers  # aiohttp would add application/octet-stream


async def test_the_answer_passes_through_unchanged(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy()
    answer = await http.post(f"{server.endpoint}/v1/chat/completions", json=CHAT)
    backend = next(b for b in backends if b.name == answer.headers["x-backend"])
    direct = await http.post(f"http://{backend.address}/v1/chat/completions", json=CHAT)
    assert answer.status_code == direct.status_code == 200
    assert answer.content == direct.content
    assert answer.json()["prompt_token_ids"] == [ord("h"), ord("i")]
    for name in ("content-type", "content-length", "x-backend"):
        assert answer.headers[name] == direct.headers[name]


async def test_other_methods_and_error_answers_pass_through(start_proxy: StartProxy, http: httpx.AsyncClient) -> None:
    server = await start_proxy()
    models = await http.get(f"{server.endpoint}/v1/models")
    assert models.status_code == 200 and models.json()["data"][0]["id"] == "stand-in"
    missing = await http.delete(f"{server.endpoint}/v1/no/such")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "NotFound"  # the backend's own answer


async def test_paths_of_neither_shape_are_not_found(start_proxy: StartProxy, http: httpx.AsyncClient) -> None:
    server = await start_proxy()
    for path in ("/", "/v2/chat", "/rollout/r/attempt/a/chat", "/rollout/r/v1/chat", "/rollout//attempt/a/v1/x"):
        answer = await http.get(server.endpoint + path)
        assert answer.status_code == 404, path
        assert answer.json()["error"]["code"] == "not_found"


async def test_an_unreachable_backend_is_a_502_with_an_openai_error(
    attempts: Attempts, http: httpx.AsyncClient, backends: list[StandInVllm]
) -> None:
    closed = "127.0.0.1:1"  # nothing listens on port 1
    server = await serve_proxy(LlmProxy(lambda: [closed], attempts))
    try:
        answer = await http.post(f"{server.endpoint}/v1/chat/completions", json=CHAT)
        assert answer.status_code == 502
        assert answer.json()["error"]["code"] == "backend_unreachable"
        assert server.proxy.stats()["failed_upstream"] == 1
    finally:
        await server.stop()


async def test_no_backend_is_a_503(start_proxy: StartProxy, http: httpx.AsyncClient) -> None:
    server = await start_proxy(addresses=[])
    answer = await http.post(f"{server.endpoint}/v1/chat/completions", json=CHAT)
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "no_backend"


async def test_a_body_over_the_limit_is_refused_unread(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy(max_body_bytes=100)
    answer = await http.post(f"{server.endpoint}/v1/chat/completions", content=b"x" * 101)
    assert answer.status_code == 413
    assert not any(backend.received for backend in backends)


async def test_a_call_no_backend_answered_is_not_counted_as_forwarded(
    attempts: Attempts, http: httpx.AsyncClient, backends: list[StandInVllm]
) -> None:
    server = await serve_proxy(LlmProxy(lambda: ["127.0.0.1:1"], attempts))  # nothing listens on port 1
    try:
        assert (await http.post(f"{server.endpoint}/v1/chat/completions", json=CHAT)).status_code == 502
        stats = server.proxy.stats()
        assert (stats["forwarded"], stats["forwarded_plain"], stats["failed_upstream"]) == (0, 0, 1)
    finally:
        await server.stop()


async def test_a_backend_cutting_a_stream_short_logs_one_warning_and_no_traceback(
    attempts: Attempts, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    first_chunk_read = asyncio.Event()

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"d\r\ndata: first\n\n\r\n")  # one chunk of the stream, then the connection drops
        await writer.drain()
        await first_chunk_read.wait()  # the agent has it: the answer began, so it cannot go to another backend
        writer.close()

    backend = await asyncio.start_server(cut, "127.0.0.1", 0)
    port = backend.sockets[0].getsockname()[1]
    server = await serve_proxy(LlmProxy(lambda: [f"127.0.0.1:{port}"], attempts))
    try:
        with caplog.at_level(logging.INFO):
            with pytest.raises(httpx.RemoteProtocolError):  # the client learns that its answer is cut short
                url = f"{server.endpoint}/v1/chat/completions"
                async with http.stream("POST", url, json={**CHAT, "stream": True}) as answer:
                    async for _ in answer.aiter_raw():
                        first_chunk_read.set()
            await asyncio.sleep(0.1)  # uvicorn logs after the connection dropped
        logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
        assert logged == [("WARNING", f"LLM backend 127.0.0.1:{port} failed mid-answer: ClientPayloadError")]
        assert server.proxy.stats()["forwarded"] == 1
    finally:
        await server.stop()
        backend.close()
        await backend.wait_closed()
