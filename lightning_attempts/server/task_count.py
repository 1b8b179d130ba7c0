"""A ``POST /tasks`` body's task count, read before the body is parsed whole.

Parsing is done on the server's event loop and costs the whole body: refusing 4.8 million tiny
tasks (60 MiB) after a full parse held the loop 4.4 s, when every worker's long poll and heartbeat
waited. ``too_many_tasks`` reads no more than the first ``limit + 1`` items of the ``tasks`` list.
"""

from __future__ import annotations

import json
import re

from starlette.responses import JSONResponse

from ..producer_models import MAX_TASKS
from .direct_route import unprocessable

_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def too_many_tasks(body: bytes, limit: int = MAX_TASKS) -> bool:
    """Whether ``body`` is a JSON object whose ``tasks`` list has more than ``limit`` items.

    False also for a body that is no such JSON: the model's validation then says what is wrong.
    """
    if body.count(b",") < limit:  # more than ``limit`` items need ``limit`` commas between them, whatever they are
        return False
    try:
        text = body.decode()
        at = _after(text, 0, "{")
        while True:
            key, at = _DECODER.raw_decode(text, _skip(text, at))
            at = _skip(text, _after(text, at, ":"))
            if key == "tasks" and text.startswith("[", at):
                over, at = _items_over(text, at + 1, limit)
                if over:
                    return True
            else:
                at = _DECODER.raw_decode(text, at)[1]
            at = _skip(text, at)
            if text.startswith("}", at):
                return False
            at = _after(text, at, ",")
    except ValueError:  # not JSON (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        return False


def refuse_too_many_tasks(body: bytes) -> JSONResponse | None:
    """A 422 naming the limit when ``body`` holds more than ``MAX_TASKS`` tasks; else None."""
    if not too_many_tasks(body):
        return None
    message = f"At most {MAX_TASKS} tasks per request: queue a larger batch in several requests"
    return unprocessable([{"type": "too_long", "loc": ("tasks",), "msg": message}], prefix=("body",))


def _items_over(text: str, at: int, limit: int) -> tuple[bool, int]:
    """Whether the array from ``at`` (past its ``[``) has more than ``limit`` items; where it ends if not."""
    at = _skip(text, at)
    if text.startswith("]", at):
        return False, at + 1
    count = 0
    while True:
        at = _DECODER.raw_decode(text, at)[1]
        count += 1
        if count > limit:
            return True, at
        at = _skip(text, at)
        if text.startswith("]", at):
            return False, at + 1
        at = _skip(text, _after(text, at, ","))


def _skip(text: str, at: int) -> int:
    match = _SPACE.match(text, at)
    return at if match is None else match.end()


def _after(text: str, at: int, token: str) -> int:
    """The index past ``token``, which must come next (whitespace aside)."""
    at = _skip(text, at)
    if not text.startswith(token, at):
        raise ValueError(f"expected {token!r} at {at}")
    return at + 1
