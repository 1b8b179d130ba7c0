"""No test falls out of every tier: each collected test's scope is run by a tier of its release (tests/scopes.py)."""

from __future__ import annotations

import pytest

from .conftest import ALL_TESTS
from .paths import ROOT
from .scopes import LAYOUT, ONCE, OWN_LOGIC, RELEASE, TIERS, Tier


def runs(tier: Tier, scope: str, releases: frozenset[str]) -> bool:
    return scope in tier.scopes and (not releases or tier.release in releases)


def test_every_test_runs_in_some_tier(request: pytest.FixtureRequest) -> None:
    collected = request.config.stash[ALL_TESTS]
    assert collected, "nothing was collected"
    nowhere = [
        name for name, (scope, only) in collected.items() if not any(runs(tier, scope, only) for tier in TIERS.values())
    ]
    assert nowhere == []


def test_every_release_and_python_runs_what_can_differ_by_them() -> None:
    assert {t.release for t in TIERS.values()} == {"0.1", "0.1.1", "0.1.2", "0.2.0", "0.2.1", "0.2.2", "0.3.0"}
    assert {t.python for t in TIERS.values()} == {"3.10", "3.11", "3.12", "3.13"}
    assert all(RELEASE in t.scopes for t in TIERS.values() if t.scopes != {ONCE})
    assert all(OWN_LOGIC in t.scopes for t in TIERS.values() if t.python != "3.11")  # the project's logic, each Python
    own_logic = {t.release for t in TIERS.values() if OWN_LOGIC in t.scopes and t.python == "3.11"}
    assert {"0.1", "0.3.0"} <= own_logic  # and on the oldest and newest release
    assert [name for name, t in TIERS.items() if ONCE in t.scopes] == ["once"]  # the slow tests, once a run


def test_the_layout_names_files_that_exist() -> None:
    assert [prefix for prefix in LAYOUT if not (ROOT / prefix).exists()] == []


def test_a_tier_leaves_out_exactly_the_scopes_it_does_not_run() -> None:
    assert TIERS["0.3.0"].deselect() == ["-m", "not once"]
    assert TIERS["py3.13-0.3.0"].deselect() == ["-m", "not once"]
    assert TIERS["0.2.1"].deselect() == ["-m", "not own_logic and not once"]
    assert TIERS["once"].deselect() == ["-m", "once"]
