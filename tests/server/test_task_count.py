"""The task count of a POST /tasks body, read from its first items: JSON's shapes, and what it leaves to validation."""

from __future__ import annotations

import json

import pytest

from lightning_attempts.server.task_count import too_many_tasks

LIMIT = 3
EMPTY: list[object] = [{} for _ in range(9)]


def body(tasks: list[object], **fields: object) -> bytes:
    return json.dumps({**fields, "tasks": tasks, "request_id": "r"}, indent=1).encode()


@pytest.mark.parametrize(
    ("raw", "over"),
    [
        (body([{"sample": i} for i in range(LIMIT)]), False),
        (body([{"sample": i} for i in range(LIMIT + 1)]), True),
        (body([{"sample": {"a": {"b": "}{"}}} for _ in range(LIMIT)]), False),  # nested objects, braces in strings
        (body([{"sample": {"a": [{}, "]"]}} for _ in range(LIMIT + 1)]), True),
        (body([{"sample": 1}] * LIMIT, metadata={"tasks": EMPTY}, pad=EMPTY), False),  # other keys skipped
        (body([{"sample": 1}] * (LIMIT + 1)).replace(b'"request_id": "r"', b"oops"), True),  # not read past it
        (b'{"tasks": [' + b"{}," * (LIMIT + 1) + b"{", True),
        (b'{"tasks": [{}, {}, {}], ' + b"{}" * 9, False),  # not JSON: validation says where
        (b"[" + b"{}," * 9 + b"{}]", False),
        (b"\xff{{{{{{{{", False),
        (body(["a"] * (LIMIT + 1)), True),  # not objects: still counted, not left to a full validation
        (body([1] * LIMIT), False),
    ],
)
def test_the_count_is_read_from_the_first_items(raw: bytes, over: bool) -> None:
    assert too_many_tasks(raw, LIMIT) is over
