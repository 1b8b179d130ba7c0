"""The verl tier needs verl, torch, ray, transformers and tokenizers: without them it fails, loudly.

The tier's virtual environments (``python3 -m nox -t verl``) install them; a
missing one is an installation error to fix, never a reason to skip.
"""

from __future__ import annotations

import importlib.util

import pytest

REQUIRED = ("verl", "torch", "ray", "transformers", "tokenizers", "tensordict", "flask")


def pytest_configure(config: pytest.Config) -> None:
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        raise pytest.UsageError(
            f"tests/verl needs {', '.join(missing)}, not importable in this environment. Run it in the "
            "verl tier's venvs (`python3 -m nox -t verl`), or leave it out: --ignore=tests/verl."
        )
    if importlib.util.find_spec("agentlightning.verl") is None:
        raise pytest.UsageError("tests/verl needs agentlightning.verl (agentlightning 0.1.2 or 0.2+ with verl)")
