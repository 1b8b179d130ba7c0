"""README.md's shell blocks, run as written and in order, as a new user would, in a copy of this checkout.

Each ```` ```bash ```` block of README.md is preceded, in the Markdown source, by a marker:

- ``<!-- docs-test: run -->``: run. All of them run in order in one bash session
  (``set -euo pipefail``), so that a variable set in one block reaches the next, as in a terminal.
- ``<!-- docs-test: serve: why -->``: runs until interrupted. Run afterwards, on its own: it must
  print ``serving on``, and once it does it gets Ctrl+C (SIGINT) and must exit with status 0.
- ``<!-- docs-test: skip: why -->``: not run here (the whole test matrix, verl, minutes of benchmark).

A block without a marker fails the test, so that no new block goes untested by oversight. The
blocks install their own environments (uv's cache makes that a minute or two), whatever this
tier's agentlightning: the test runs once, in the 0.3.0 tier.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ..paths import ROOT
from .blocks import Block, blocks

KINDS = ("run", "serve", "skip")


def shell_blocks(markdown: str) -> list[Block]:
    """The ``bash`` blocks of ``markdown``, each with its marker (a kind other than ``KINDS`` counts as none)."""
    return [b if b.kind in KINDS else Block(b.line, "", "", b.code) for b in blocks(markdown, "bash")]


def test_every_shell_block_is_marked_and_skips_say_why() -> None:
    blocks = shell_blocks((ROOT / "README.md").read_text())
    assert blocks, "README.md has no bash block"
    unmarked = [b.line for b in blocks if not b.kind]
    assert not unmarked, f"README.md: bash blocks at lines {unmarked} need a <!-- docs-test: ... --> marker"
    assert all(b.reason for b in blocks if b.kind in ("skip", "serve")), "a skip or serve marker must say why"
    assert any(b.kind == "run" for b in blocks)


def test_shell_blocks_parse_with_their_markers() -> None:
    markdown = "a\n<!-- docs-test: skip: slow -->\n```bash\nsleep 1\n```\n\n```bash\necho hi\n```\n"
    assert shell_blocks(markdown) == [Block(3, "skip", "slow", "sleep 1\n"), Block(7, "", "", "echo hi\n")]


def fresh_copy(destination: Path) -> Path:
    """The checkout's files (tracked and not ignored, as they are now) in ``destination``, as a clone has them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    )
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # a deleted file is still listed until committed
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode)
    return destination


def new_user_environment() -> dict[str, str]:
    """This environment without this venv (PATH, VIRTUAL_ENV) and without any LIGHTNING_ATTEMPTS_* variable."""
    own_bin = str(Path(sys.prefix) / "bin")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != own_bin)
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "AGL_KEY")
    base = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("LIGHTNING_ATTEMPTS_")}
    # Offline, importing agentlightning 0.2+ waits ~10 s for litellm's price map: CI sets this (.ci/run).
    return {**base, "PATH": path, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def run_in_order(blocks: list[Block], checkout: Path, log: Path) -> None:
    """Run the blocks in one bash session; on failure, say which block and show the end of its output."""
    script = ["set -euo pipefail"]
    for number, block in enumerate(blocks, 1):
        script += [f"echo '### docs-test: block {number} (README.md line {block.line})'", block.code]
    with log.open("w") as out:
        done = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=checkout,
            env=new_user_environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1100,
        )
    output = log.read_text()
    if done.returncode != 0:
        started = re.findall(r"### docs-test: (block \d+ \(README\.md line \d+\))", output)
        where = started[-1] if started else "before the first block"
        pytest.fail(f"README.md's shell blocks failed (exit {done.returncode}) in {where}:\n{output[-4000:]}")


def serve_then_interrupt(block: Block, checkout: Path) -> None:
    """Run a block that serves until interrupted: it must say it serves, then stop on Ctrl+C with status 0."""
    process = subprocess.Popen(
        ["bash", "-c", "set -euo pipefail\n" + block.code],
        cwd=checkout,
        env=new_user_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, which Ctrl+C reaches as a whole
    )
    lines: list[str] = []
    serving = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "serving on" in line:
                serving.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert serving.wait(timeout=180), f"README.md line {block.line} never served:\n{''.join(lines)[-3000:]}"
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=60) == 0, f"README.md line {block.line}:\n{''.join(lines)[-3000:]}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        reader.join(timeout=30)


@pytest.mark.once
@pytest.mark.timeout(1500)
@pytest.mark.only_release("0.3.0")  # the blocks build their own environments: once a run
def test_readme_shell_blocks_run_as_written(tmp_path: Path) -> None:
    blocks = shell_blocks((ROOT / "README.md").read_text())
    checkout = fresh_copy(tmp_path / "checkout")
    run_in_order([b for b in blocks if b.kind == "run"], checkout, tmp_path / "readme.log")
    for block in blocks:
        if block.kind == "serve":
            serve_then_interrupt(block, checkout)
