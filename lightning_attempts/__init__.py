"""Attempt-aware drop-in replacements for agentlightning's legacy task server and client.

Every claim of a task is an attempt with its own id; the server stores only a valid
attempt's result, at most one per task, so a slow worker's late result can no
longer land twice or in the next training batch.

Importing the package checks the installed agentlightning release (``releases``) and
imports nothing of agentlightning: each public name is imported from its module when first
used, so that ``lightning-attempts --version`` and ``--help`` answer at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from _lightning_attempts_switch import after_import, any_variable

from .releases import AGENTLIGHTNING_VERSION, SUPPORTED_RELEASES

if TYPE_CHECKING:
    from .client import AttemptAwareClient, Claim, RemoteServer
    from .errors import LightningAttemptsError, OptionError, ServerNotRunning, ServerStartError, ServerStopped
    from .models import AttemptRollout, AttemptTask, AttemptTaskIfAny
    from .options import Options, StalePolicy
    from .server import AttemptAwareServer
    from .store import AttemptAwareDataStore, DropReason, Submission
    from .switch.install import install, installed, uninstall

__version__ = "0.1.0"

_HOMES = {
    ".client": ("AttemptAwareClient", "Claim", "RemoteServer"),
    ".errors": ("LightningAttemptsError", "OptionError", "ServerNotRunning", "ServerStartError", "ServerStopped"),
    ".models": ("AttemptRollout", "AttemptTask", "AttemptTaskIfAny"),
    ".options": ("Options", "StalePolicy"),
    ".server": ("AttemptAwareServer",),
    ".store": ("AttemptAwareDataStore", "DropReason", "Submission"),
    ".switch.install": ("install", "installed", "uninstall"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "AGENTLIGHTNING_VERSION",
    "SUPPORTED_RELEASES",
    "AttemptAwareClient",
    "AttemptAwareDataStore",
    "AttemptAwareServer",
    "AttemptRollout",
    "AttemptTask",
    "AttemptTaskIfAny",
    "Claim",
    "DropReason",
    "LightningAttemptsError",
    "OptionError",
    "Options",
    "RemoteServer",
    "ServerNotRunning",
    "ServerStartError",
    "ServerStopped",
    "StalePolicy",
    "Submission",
    "install",
    "installed",
    "uninstall",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


def _activate() -> None:
    from .switch.activation import activate

    activate()


# With a LIGHTNING_ATTEMPTS_* variable set, activate the switch (install, or report) once agentlightning is
# imported, as the .pth hook does: a process in which that hook did not run (the variable set after it started)
# is covered too.
if any_variable():
    after_import("agentlightning", _activate)
