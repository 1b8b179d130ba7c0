"""ASGI helpers: a request's whole body, and OpenAI-style error answers (``{"error": {"message", "type", "code"}}``)."""

from __future__ import annotations

import json

from starlette.types import Receive, Send

JSON_HEADERS = ((b"content-type", b"application/json"),)


def error_body(message: str, type_: str, code: str, param: str | None = None) -> bytes:
    """The JSON body of an error answer, as OpenAI's API and vLLM shape it."""
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


async def send_error(
    send: Send,
    status: int,
    message: str,
    *,
    type_: str,
    code: str,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    param: str | None = None,
) -> None:
    """Answer ``status`` with an OpenAI-style error body naming ``code`` (and the request field ``param``, if any)."""
    body = error_body(message, type_, code, param)
    start_headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The request's whole body, or None past ``limit`` bytes (the rest is left unread)."""
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body if len(body) <= limit else None
    parts = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)
