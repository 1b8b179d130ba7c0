"""The fenced code blocks of a Markdown page, each with its test marker: what the docs tests run."""

from __future__ import annotations

import re
from dataclasses import dataclass

MARKER = re.compile(r"<!-- docs-test: (\w+)(?::\s*(.*?))? -->")
"""The line before a block's fence: ``<!-- docs-test: KIND -->`` or ``<!-- docs-test: KIND: why -->``."""


@dataclass(frozen=True)
class Block:
    line: int
    kind: str
    """The marker's kind (``run``, ``serve``, ``skip``, ``fragment``), or ``""`` when unmarked."""
    reason: str
    code: str


def blocks(markdown: str, language: str) -> list[Block]:
    """The ``language`` blocks of ``markdown``, each with the marker on the line before its fence (if any)."""
    found: list[Block] = []
    for fence in re.finditer(rf"^```{language}\n(.*?)^```$", markdown, re.MULTILINE | re.DOTALL):
        before = markdown[: fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.fullmatch(before.strip())
        line = markdown.count("\n", 0, fence.start()) + 1
        kind, reason = (marker.group(1), marker.group(2) or "") if marker else ("", "")
        found.append(Block(line, kind, reason, fence.group(1)))
    return found
