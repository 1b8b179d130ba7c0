"""Shared fixtures (real servers on loopback, each in a thread of its own, and a manual clock) and each test's scope."""

from __future__ import annotations

import os
from collections.abc import Iterator

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import pytest

from lightning_attempts import AttemptAwareServer
from lightning_attempts.compat import AGENTLIGHTNING_VERSION
from lightning_attempts.testing import ManualClock, ServerThread, serve_in_thread

from .scopes import RELEASE, scope_of


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def served(clock: ManualClock) -> Iterator[ServerThread[AttemptAwareServer]]:
    """An AttemptAwareServer (60 s timeout, manual clock) serving on a free loopback port."""
    with serve_in_thread(AttemptAwareServer(port=0, task_timeout_seconds=60, clock=clock)) as running:
        yield running


ALL_TESTS = pytest.StashKey[dict[str, tuple[str, frozenset[str]]]]()
"""Every test collected in this run, before a tier's ``-m`` leaves some out: its scope and its only releases."""


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its scope (tests/scopes.py), and skip a test written for other releases."""
    collected: dict[str, tuple[str, frozenset[str]]] = {}
    for item in items:
        scope = scope_of(item.nodeid.split("::")[0], {mark.name for mark in item.iter_markers()})
        if scope != RELEASE and item.get_closest_marker(scope) is None:
            item.add_marker(scope)
        only = item.get_closest_marker("only_release")
        releases = frozenset(str(release) for release in only.args) if only else frozenset[str]()
        if releases and AGENTLIGHTNING_VERSION not in releases:
            item.add_marker(pytest.mark.skip(reason=f"written for agentlightning {', '.join(sorted(releases))}"))
        collected[item.nodeid] = (scope, releases)
    config.stash[ALL_TESTS] = collected
