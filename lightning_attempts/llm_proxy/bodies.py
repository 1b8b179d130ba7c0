"""Reading a request's body within bounds: its own size, a deadline, and a byte budget shared by every call.

``BodyBudget`` counts the body bytes the proxy holds across all connections at once: a body
is counted from its first byte read (or its whole ``Content-Length``, before any is read)
until its call ends. A body that would take the count past the limit is refused at once
(``OverBudget``: 503 with ``Retry-After``) rather than kept waiting, since a waiting call
still holds its connection and what the server buffered of it; the openai client retries
a 503 after ``Retry-After``. ``read_body`` raises ``BodyRefused`` subclasses; the caller gives
back what it took once the call is over.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field

from starlette.types import Receive

MAX_BUFFERED_BYTES = 256 * 2**20
"""Body bytes held across all calls at once: four bodies of the largest size, or thousands of usual ones."""
DISCARDED_BYTES = 2**20
"""A refusal leaves the connection open when at most this much body is left unread: the server reads the rest
and drops it (nothing is kept), so that a caller still sending reads its answer rather than a reset. A larger
(or chunked) body's connection is closed."""
BODY_TIMEOUT_SECONDS = 60.0
"""Longest time from a call's headers to the last byte of its body (a body that trickles in is cut)."""


class BodyBudget:
    """A count of the body bytes held in memory across all calls, at most ``limit``."""

    def __init__(self, limit: int = MAX_BUFFERED_BYTES) -> None:
        if limit < 1:
            raise ValueError("the body budget must be at least 1 byte")
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        """Count ``size`` more bytes held, if that stays within the limit."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        """Count ``size`` bytes no longer held."""
        self.held -= size


class BodyRefused(Exception):
    """The body was not read whole (the rest is left unread)."""


class TooLarge(BodyRefused):
    """Larger than the proxy's ``max_body_bytes`` (413)."""


class OverBudget(BodyRefused):
    """Reading it would take the bytes held by all calls past the budget (503)."""


class TimedOut(BodyRefused):
    """Not in whole within the body timeout (408)."""


class ClientGone(BodyRefused):
    """The client hung up before the body was in."""


def little_left(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request's body, unread, is at most ``DISCARDED_BYTES`` (none at all without either header)."""
    declared = declared_length(headers)
    if declared is not None:
        return declared <= DISCARDED_BYTES
    return not any(name == b"transfer-encoding" for name, _ in headers)


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The request's ``Content-Length``, when it has a valid one (the server has checked it)."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


@dataclass(slots=True)
class _Reading:
    taken: int
    """Bytes taken from the budget so far."""
    size: int = 0
    parts: list[bytes] = field(default_factory=list[bytes])


async def read_body(
    receive: Receive, declared: int | None, *, limit: int, budget: BodyBudget, timeout_seconds: float | None
) -> bytes:
    """The request's whole body, its bytes taken from ``budget`` (give back ``len(body)`` after the call).

    ``declared``: its ``Content-Length``, refused (too large, over budget) before a byte is read.
    """
    if declared is not None and declared > limit:
        raise TooLarge
    reading = _Reading(declared or 0)
    if reading.taken and not budget.take(reading.taken):
        raise OverBudget
    try:
        if sys.version_info >= (3, 11):
            async with asyncio.timeout(timeout_seconds):
                await _read(receive, reading, limit, budget)
        else:
            await asyncio.wait_for(_read(receive, reading, limit, budget), timeout_seconds)
    except asyncio.TimeoutError:  # TimeoutError's alias from 3.11
        budget.give(reading.taken)
        raise TimedOut from None
    except BaseException:
        budget.give(reading.taken)
        raise
    budget.give(reading.taken - reading.size)
    parts = reading.parts
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _read(receive: Receive, reading: _Reading, limit: int, budget: BodyBudget) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        reading.size += len(chunk)
        if reading.size > limit:
            raise TooLarge
        if reading.size > reading.taken:
            if not budget.take(reading.size - reading.taken):
                raise OverBudget
            reading.taken = reading.size
        if chunk:
            reading.parts.append(chunk)
        if not message.get("more_body", False):
            return
