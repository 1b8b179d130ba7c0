"""Why a test runs where it runs: every test has one scope, and each tier of ``noxfile.py`` runs some scopes.

- ``release`` (the default): its outcome can depend on the agentlightning release or the Python, because it
  touches agentlightning's classes or wire format, the switch and its import hook, the shim under the
  release's runner and trainer, the client, the daemon's parts or the command line's start-up. Every tier.
- ``own_logic``: the project's own logic, which no release changes (the store's state machine, the options,
  the LLM proxy against stand-in backends, the docs' parsers); it can still depend on the Python. The oldest
  and newest release tiers, and every extra Python.
- ``once``: slow, and about neither the release nor the Python (README's blocks as a new user runs them, the
  benchmark's smoke run, a wheel built and installed): one tier of their own, ``once`` (0.3.0 on 3.11), once a run.

A test's scope is its ``once`` mark if it has one, else the first entry of ``LAYOUT`` that its file's path starts
with, else ``release``. A test written for one release only says so with ``pytest.mark.only_release("0.3.0")``
(skipped elsewhere); ``tests/test_scopes.py`` checks that some tier runs every test of the suite.
"""

from __future__ import annotations

from dataclasses import dataclass

RELEASE, OWN_LOGIC, ONCE = "release", "own_logic", "once"
SCOPES = (RELEASE, OWN_LOGIC, ONCE)

LAYOUT: dict[str, str] = {
    # The store's synchronous state machine, on a manual clock; no server, no upstream client.
    "tests/store/test_store.py": OWN_LOGIC,
    "tests/store/test_model.py": OWN_LOGIC,
    "tests/store/test_outcome_table.py": OWN_LOGIC,
    "tests/store/test_liveness.py": OWN_LOGIC,
    "tests/store/test_mixed_fleet.py": OWN_LOGIC,
    "tests/test_options.py": OWN_LOGIC,
    # The count of a POST /tasks body's tasks, read from its bytes: json and re only.
    "tests/server/test_task_count.py": OWN_LOGIC,
    # The tests' fork server against fresh interpreters, on a program that imports nothing of agentlightning.
    "tests/test_prewarmed.py": OWN_LOGIC,
    # serve's LLM proxy settings and flags, checked before agentlightning loads: nothing of agentlightning.
    "tests/cli/test_serve_llm_proxy_options.py": OWN_LOGIC,
    # The attempt-aware LLM proxy against stand-in vLLMs, with httpx and openai's client: nothing of agentlightning.
    "tests/llm_proxy/": OWN_LOGIC,
    # README's and the guide's blocks and option list; test_producer_example.py runs 0.3.0's trainer: release.
    "tests/docs/test_options_documented.py": OWN_LOGIC,
    "tests/docs/test_python_blocks.py": OWN_LOGIC,
    "tests/docs/test_readme.py": OWN_LOGIC,
}


@dataclass(frozen=True)
class Tier:
    """A nox session's agentlightning release, Python and the scopes it runs."""

    release: str
    python: str
    scopes: frozenset[str]

    def deselect(self) -> list[str]:
        """pytest's arguments that leave out the scopes this tier does not run."""
        if RELEASE not in self.scopes:  # `release` tests carry no mark: select the scopes run instead
            return ["-m", " or ".join(scope for scope in SCOPES if scope in self.scopes)]
        left_out = [scope for scope in SCOPES if scope not in self.scopes]
        return ["-m", " and ".join(f"not {scope}" for scope in left_out)] if left_out else []


PYTHONS = frozenset({RELEASE, OWN_LOGIC})
RELEASE_ONLY = frozenset({RELEASE})
ONCE_ONLY = frozenset({ONCE})

TIERS: dict[str, Tier] = {
    # Longest first, as measured four at a time on 2026-12-07 (minutes), so that no long tier starts last. Each
    # release runs on one Python: 0.1.2 and 0.2.2 on their extra Python only, where they run a superset of what a
    # 3.11 tier of theirs ran (that tier cost 4 and 7 minutes; the verl tiers run 0.1.2 and 0.3.0 on 3.11 too).
    "0.3.0": Tier("0.3.0", "3.11", PYTHONS),  # 13 (20 with the `once` tests): the oldest and newest release
    "py3.13-0.3.0": Tier("0.3.0", "3.13", PYTHONS),  # 13: the other Pythons
    "once": Tier("0.3.0", "3.11", ONCE_ONLY),  # 13: the slow tests about neither release nor Python, once a run
    "py3.12-0.2.2": Tier("0.2.2", "3.12", PYTHONS),  # 10
    "0.1": Tier("0.1", "3.11", PYTHONS),  # 6
    "0.2.1": Tier("0.2.1", "3.11", RELEASE_ONLY),  # 8: the releases in between, what a release can change
    "0.2.0": Tier("0.2.0", "3.11", RELEASE_ONLY),  # 7
    "py3.10-0.1.2": Tier("0.1.2", "3.10", PYTHONS),  # 6
    "0.1.1": Tier("0.1.1", "3.11", RELEASE_ONLY),  # 5
}
"""The suite's tiers (``tests(<id>)`` in noxfile.py), in the order nox starts them; verl's are apart."""


def scope_of(path: str, marks: set[str]) -> str:
    """The scope of a test in ``path`` (relative to the checkout) with these mark names."""
    if ONCE in marks:
        return ONCE
    return next((scope for prefix, scope in LAYOUT.items() if path.startswith(prefix)), RELEASE)
