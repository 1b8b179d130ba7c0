"""Shared fixtures: real servers on loopback, each in a thread of its own, and a manual clock."""

from __future__ import annotations

import os
from collections.abc import Iterator

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import pytest

from lightning_attempts import AttemptAwareServer
from lightning_attempts.testing import ManualClock, ServerThread, serve_in_thread


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def served(clock: ManualClock) -> Iterator[ServerThread[AttemptAwareServer]]:
    """An AttemptAwareServer (60 s timeout, manual clock) serving on a free loopback port."""
    with serve_in_thread(AttemptAwareServer(port=0, task_timeout_seconds=60, clock=clock)) as running:
        yield running
