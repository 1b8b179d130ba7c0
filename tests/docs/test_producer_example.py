"""README's ``serve`` example, as written: its ``workers.py`` and ``producer.py`` against a real ``serve``.

README.md shows the two scripts (among others) as Python blocks whose first line names the file (``# workers.py: ...``);
this test writes them out unchanged, starts ``lightning-attempts serve``, then the workers (agentlightning's
trainer and its forked runners) and the producer, each as a process, and reads what the producer prints.
Ctrl+C ends the workers and the server, as in the README's terminals.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ..paths import README

PYTHON_BLOCK = re.compile(r"^```python\n(# (\w+\.py):.*?)^```$", re.MULTILINE | re.DOTALL)
EXPECTED = ["Ada: reward 17.0", "Grace: reward 19.0", "Alan: reward 18.0", "Edsger: reward 20.0"]

pytestmark = pytest.mark.only_release("0.3.0")  # README's example is written for it


def scripts() -> dict[str, str]:
    """README's Python blocks that are files, by name."""
    return {match.group(2): match.group(1) for match in PYTHON_BLOCK.finditer(README.read_text())}


def group(leader: int) -> list[psutil.Process]:
    """The processes of ``leader``'s process group, still running."""
    found: list[psutil.Process] = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == leader and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


KEY = "greeter-run-1"
"""The README's key, exported in each of its three terminals."""


@pytest.fixture
def serve() -> Iterator[str]:
    """``lightning-attempts serve --port 0``: its endpoint; Ctrl+C at the end, which it must obey cleanly."""
    command = [sys.executable, "-m", "lightning_attempts", "serve", "--port", "0", "--log-level", "warning"]
    environment = {**os.environ, "AGL_KEY": KEY}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=environment)
    try:
        assert process.stderr is not None
        starting = process.stderr.readline()  # it says it starts, then where it serves
        line = process.stderr.readline()
        match = re.search(r"serving on (http://\S+)", line)
        assert match, starting + line + process.stderr.read()
        threading.Thread(target=process.stderr.read, daemon=True).start()  # nothing blocks on a full pipe
        yield match.group(1)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def test_readme_names_the_two_scripts_its_shell_block_runs() -> None:
    assert {"producer.py", "workers.py"} <= set(scripts())  # and the LLM proxy's (test_serve_llm_proxy_example.py)
    text = README.read_text()
    assert ".venv/bin/python workers.py" in text and ".venv/bin/python producer.py" in text
    assert text.count(f"export AGL_KEY={KEY}") == 3  # the server's terminal and the scripts' two


@pytest.mark.timeout(300)
def test_the_readme_producer_gets_its_batch_done_by_the_readme_workers(serve: str, tmp_path: Path) -> None:
    for name, code in scripts().items():
        (tmp_path / name).write_text(code)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTNING_ATTEMPTS_")} | {"AGL_KEY": KEY}
    workers = subprocess.Popen(
        [sys.executable, "workers.py", serve],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a group of its own, as a terminal's, which Ctrl+C reaches as a whole
    )
    try:
        producer = subprocess.run(
            [sys.executable, "producer.py", serve],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert producer.returncode == 0, producer.stderr[-3000:]
        assert producer.stdout.splitlines() == EXPECTED
        os.killpg(workers.pid, signal.SIGINT)  # Ctrl+C in the workers' terminal
        workers.wait(timeout=60)  # agentlightning's trainer ends its forked workers, then itself
        psutil.wait_procs(group(workers.pid), timeout=30)
        assert group(workers.pid) == [], "a worker outlived Ctrl+C"
    finally:
        for process in group(workers.pid):
            process.kill()
        if workers.poll() is None:
            workers.kill()
            workers.wait(timeout=30)
