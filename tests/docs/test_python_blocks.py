"""README.md's and the migration guide's Python blocks: each runs as written, or says why it is a fragment.

Each ```` ```python ```` block is preceded, in the Markdown source, by a marker:

- ``<!-- docs-test: run -->``: a complete program; it runs here, as a new user would paste it into a
  file and run it, in a fresh interpreter of this environment, and must exit with status 0;
- ``<!-- docs-test: fragment: why -->``: part of a program the reader has (an agent, a trainer), not run;
  the marker says why and what tests the same thing. It must still parse, and import what it uses but
  the reader's own objects (``READERS``).

A block without a marker fails the test, so that no block goes untested by oversight.
"""

from __future__ import annotations

import ast
import builtins
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..paths import GUIDE, README
from .blocks import Block, blocks

DOCUMENTS = (README, GUIDE)
KINDS = ("run", "fragment")
READERS = frozenset({"agent", "trainer"})
"""What a fragment may use without defining or importing it: the reader's agent and trainer."""


@dataclass(frozen=True)
class PythonBlock:
    document: str
    block: Block

    def __str__(self) -> str:
        return f"{self.document} line {self.block.line}"


def python_blocks(path: Path) -> list[PythonBlock]:
    """The ``python`` blocks of ``path``, each with its marker (a kind other than ``KINDS`` counts as none)."""
    return [
        PythonBlock(path.name, b if b.kind in KINDS else Block(b.line, "", "", b.code))
        for b in blocks(path.read_text(), "python")
    ]


ALL = [block for path in DOCUMENTS for block in python_blocks(path)]


def test_every_python_block_is_marked_and_fragments_say_why() -> None:
    unmarked = [str(b) for b in ALL if not b.block.kind]
    assert not unmarked, f"Python blocks need a <!-- docs-test: run --> or fragment marker: {unmarked}"
    assert all(b.block.reason for b in ALL if b.block.kind == "fragment"), "a fragment marker must say why"
    assert sum(b.block.kind == "run" for b in ALL if b.document == README.name) >= 2


def test_blocks_parse_with_their_markers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- docs-test: fragment: yours -->\n```python\nx\n```\n\n```python\ny\n```\n")
    assert python_blocks(page) == [
        PythonBlock("page.md", Block(2, "fragment", "yours", "x\n")),
        PythonBlock("page.md", Block(6, "", "", "y\n")),
    ]


def undefined_names(code: str) -> set[str]:
    """Names ``code`` reads but neither binds, imports nor finds among the builtins."""
    bound: set[str] = set(dir(builtins))
    read: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((alias.asname or alias.name).partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return read - bound


def test_undefined_names_are_found() -> None:
    assert undefined_names("import a.b\nfrom c import d as e\nx = a.b(e, f, len)\nprint(x, agent)") == {"f", "agent"}


@pytest.mark.parametrize("block", [b for b in ALL if b.block.kind == "fragment"], ids=str)
def test_a_fragment_imports_what_it_uses_but_the_readers_objects(block: PythonBlock) -> None:
    assert undefined_names(block.block.code) <= READERS, f"{block} uses names it never imports"


@pytest.mark.once
@pytest.mark.timeout(600)
@pytest.mark.parametrize("block", [b for b in ALL if b.block.kind == "run"], ids=str)
def test_python_block_runs_as_written(block: PythonBlock, tmp_path: Path) -> None:
    program = tmp_path / "example.py"
    program.write_text(block.block.code)
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
