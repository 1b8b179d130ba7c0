"""Without a legacy server (agentlightning 1.0+, or an install missing it) the import fails clearly."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SIMULATE_1_0 = """
import importlib.metadata
real_version = importlib.metadata.version
importlib.metadata.version = lambda name: "1.0.0" if name == "agentlightning" else real_version(name)
"""

SIMULATE_NO_LEGACY_SERVER = """
import sys
class HideLegacyServer:
    def find_spec(self, name, path=None, target=None):
        if name == "agentlightning.server":
            raise ImportError("No module named 'agentlightning.server'")
        return None
sys.meta_path.insert(0, HideLegacyServer())
"""


def import_with(simulation: str) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(simulation) + "\nimport lightning_attempts\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_agentlightning_1_0_is_refused_with_the_supported_range() -> None:
    done = import_with(SIMULATE_1_0)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "ImportError: lightning_attempts patches the legacy task server of agentlightning >=0.1,<1.0"
    )
    assert "agentlightning 1.0.0 is installed, which has no legacy server" in last
    assert "0.1, 0.1.1, 0.1.2, 0.2.0, 0.2.1, 0.2.2, 0.3.0" in last


def test_an_install_without_the_legacy_server_is_refused() -> None:
    done = import_with(SIMULATE_NO_LEGACY_SERVER)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "could not be imported with its legacy server" in last
    assert ">=0.1,<1.0" in last
