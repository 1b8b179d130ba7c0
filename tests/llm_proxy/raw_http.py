"""HTTP/1.1 by hand, for what httpx will not send: bodies shorter than they say, paths with dot segments, hang-ups."""

from __future__ import annotations

import asyncio


def head(method: str, path: str, length: int | None, *headers: str) -> bytes:
    """A request's head (``Content-Length: length`` unless None)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: proxy", *headers]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def exchange(port: int, request: bytes, seconds: float = 10.0) -> tuple[int, bytes]:
    """Send ``request``, read until the proxy closes the connection: its status and all it sent.

    Raises ``TimeoutError`` when the connection is still open after ``seconds``.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), seconds)
    finally:
        writer.close()
    return status_of(answer), answer


def status_of(answer: bytes) -> int:
    """The status code of an answer's first line (0 when there is none)."""
    first = answer.split(b"\r\n", 1)[0].split()
    return int(first[1]) if len(first) > 1 else 0


async def read_answer(reader: asyncio.StreamReader, seconds: float = 10.0) -> tuple[int, bytes]:
    """One answer with a ``Content-Length``, read off an open connection: its status and all of it."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), seconds)
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    return status_of(head), head + await asyncio.wait_for(reader.readexactly(length), seconds)


async def ask(port: int, request: bytes, seconds: float = 10.0) -> tuple[int, bytes]:
    """Send ``request`` and read its answer, without waiting for the connection to close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await read_answer(reader, seconds)
    finally:
        writer.close()
