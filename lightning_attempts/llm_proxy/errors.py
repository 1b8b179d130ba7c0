"""OpenAI-style error answers: ``{"error": {"message", "type", "param", "code"}}``, which the openai client raises."""

from __future__ import annotations

import json

from starlette.types import Send

JSON_HEADERS = ((b"content-type", b"application/json"),)


def error_body(message: str, type_: str, code: str) -> bytes:
    """The JSON body of an error answer, as OpenAI's API and vLLM shape it."""
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()


async def send_error(
    send: Send,
    status: int,
    message: str,
    *,
    type_: str,
    code: str,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """Answer ``status`` with an OpenAI-style error body naming ``code``."""
    body = error_body(message, type_, code)
    start_headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": body})
