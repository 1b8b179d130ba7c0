"""README.md's and the migration guide's Python blocks: each runs as written, or says why it is a fragment.

Each ```` ```python ```` block is preceded, in the Markdown source, by a marker:

- ``<!-- docs-test: run -->``: a complete program; it runs here, as a new user would paste it into a
  file and run it, in a fresh interpreter of this environment, and must exit with status 0;
- ``<!-- docs-test: fragment: why -->``: part of a program the reader has (an agent, a trainer), not run;
  the marker says why and what tests the same thing.

A block without a marker fails the test, so that no block goes untested by oversight.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..paths import GUIDE, README

MARKER = re.compile(r"<!-- docs-test: (run|fragment)(?::\s*(.*?))? -->")
FENCE = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
DOCUMENTS = (README, GUIDE)


@dataclass(frozen=True)
class Block:
    document: str
    line: int
    kind: str
    """``run``, ``fragment``, or ``""`` when unmarked."""
    reason: str
    code: str

    def __str__(self) -> str:
        return f"{self.document} line {self.line}"


def python_blocks(path: Path) -> list[Block]:
    """The ``python`` blocks of ``path``, each with the marker on the line before its fence (if any)."""
    markdown = path.read_text()
    blocks: list[Block] = []
    for fence in FENCE.finditer(markdown):
        before = markdown[: fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.fullmatch(before.strip())
        line = markdown.count("\n", 0, fence.start()) + 1
        kind, reason = (marker.group(1), marker.group(2) or "") if marker else ("", "")
        blocks.append(Block(path.name, line, kind, reason, fence.group(1)))
    return blocks


ALL = [block for path in DOCUMENTS for block in python_blocks(path)]


def test_every_python_block_is_marked_and_fragments_say_why() -> None:
    unmarked = [str(b) for b in ALL if not b.kind]
    assert not unmarked, f"Python blocks need a <!-- docs-test: run --> or fragment marker: {unmarked}"
    assert all(b.reason for b in ALL if b.kind == "fragment"), "a fragment marker must say why"
    assert sum(b.kind == "run" for b in ALL if b.document == README.name) >= 2


def test_blocks_parse_with_their_markers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- docs-test: fragment: yours -->\n```python\nx\n```\n\n```python\ny\n```\n")
    assert python_blocks(page) == [Block("page.md", 2, "fragment", "yours", "x\n"), Block("page.md", 6, "", "", "y\n")]


@pytest.mark.once
@pytest.mark.timeout(600)
@pytest.mark.parametrize("block", [b for b in ALL if b.kind == "run"], ids=str)
def test_python_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    program = tmp_path / "example.py"
    program.write_text(block.code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTNING_ATTEMPTS_") and k != "AGL_KEY"}
    done = subprocess.run(
        [sys.executable, str(program)],
        cwd=tmp_path,  # not the checkout: the installed package, as a user's script sees it
        env={**env, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{block} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
