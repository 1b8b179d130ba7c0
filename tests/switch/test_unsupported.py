"""Without a legacy server (agentlightning 1.0+, or an install missing it) the import fails clearly.

Each case runs in a fresh interpreter whose agentlightning is altered before the import:
a meta-path finder hides modules, and ``importlib.metadata.version`` reports a fake version.
"""

from __future__ import annotations

import sys
import textwrap

import pytest

import lightning_attempts
from lightning_attempts import compat

from .. import prewarmed

RANGE = ">=0.1,<1.0"
RELEASES = "0.1, 0.1.1, 0.1.2, 0.2.0, 0.2.1, 0.2.2, 0.3.0"

HIDE = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == hidden or name.startswith(hidden + ".") for hidden in {hidden!r}):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Hide())
"""

VERSION = """
import importlib.metadata
real_version = importlib.metadata.version
def version(name):
    if name.replace("_", "-").lower() != "agentlightning":
        return real_version(name)
    if {version!r} is None:
        raise importlib.metadata.PackageNotFoundError(name)
    return {version!r}
importlib.metadata.version = version
"""

IMPORT = "import lightning_attempts"
CLI = """
import runpy, sys
sys.argv = ["lightning-attempts", "--help"]
runpy.run_module("lightning_attempts", run_name="__main__")
"""


def simulate(*, hide: tuple[str, ...] = (), version: str | None = "", then: str = IMPORT) -> str:
    """Run ``then`` in a fresh interpreter with ``hide`` hidden and agentlightning at ``version``
    ("" keeps the real one, None: not installed); return the last line of its error output."""
    script = HIDE.format(hidden=hide) if hide else ""
    if version != "":
        script += VERSION.format(version=version)
    done = prewarmed.run(
        [sys.executable, "-c", textwrap.dedent(script) + then], capture_output=True, text=True, timeout=90
    )
    assert done.returncode != 0, done.stdout
    return done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("version", ["1.0.0", "1.2.0rc1"])
def test_agentlightning_1_0_or_later_is_refused_with_the_supported_range(version: str) -> None:
    # 1.0 removed the legacy server; the version alone is refused, before importing anything.
    last = simulate(hide=("agentlightning.server",), version=version)
    assert last.startswith(f"ImportError: lightning_attempts patches the legacy task server of agentlightning {RANGE}")
    assert f"(releases {RELEASES})" in last
    assert f"agentlightning {version} is installed, which has no legacy server" in last
    assert "LightningStore" in last


def test_an_install_without_the_legacy_server_is_refused() -> None:
    """The release is supported but broken: the first name that needs agentlightning says so."""
    last = simulate(hide=("agentlightning.server",), then="from lightning_attempts import AttemptAwareServer")
    assert last.startswith(f"ImportError: lightning_attempts patches the legacy task server of agentlightning {RANGE}")
    installed = compat.AGENTLIGHTNING_VERSION
    assert f"agentlightning {installed} could not be imported with its legacy server" in last
    assert "No module named 'agentlightning.server'" in last


def test_no_agentlightning_at_all_is_refused() -> None:
    last = simulate(hide=("agentlightning",), version=None)
    assert last.startswith(f"ImportError: lightning_attempts patches the legacy task server of agentlightning {RANGE}")
    assert "agentlightning is not installed" in last


def test_the_command_line_says_so_too() -> None:
    last = simulate(hide=("agentlightning.server",), version="1.0.0", then=CLI)
    assert last.startswith("ImportError: lightning_attempts patches the legacy task server")


def test_the_installed_release_is_a_supported_one() -> None:
    """The positive case, and what the matrix relies on: each venv really has its release."""
    assert lightning_attempts.AGENTLIGHTNING_VERSION in compat.SUPPORTED_RELEASES
    assert ", ".join(compat.SUPPORTED_RELEASES) == RELEASES
    assert compat.SUPPORTED_RANGE == RANGE
