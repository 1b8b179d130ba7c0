"""Attempt-aware drop-in replacements for agentlightning's legacy task server and client.

Every claim of a task is an attempt with its own id; the server stores only a valid
attempt's result, at most one per task, so a slow worker's late result can no
longer land twice or in the next training batch.
"""

from __future__ import annotations

from _lightning_attempts_switch import after_import, any_variable

from .client import AttemptAwareClient, Claim
from .compat import AGENTLIGHTNING_VERSION, SUPPORTED_RELEASES
from .errors import LightningAttemptsError, OptionError, ServerNotRunning, ServerStartError, ServerStopped
from .models import AttemptRollout, AttemptTask, AttemptTaskIfAny
from .options import Options, StalePolicy
from .server import AttemptAwareServer
from .store import AttemptAwareDataStore, DropReason, Submission
from .switch.install import install, installed, uninstall

__version__ = "0.1.0"

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
    "ServerNotRunning",
    "ServerStartError",
    "ServerStopped",
    "StalePolicy",
    "Submission",
    "install",
    "installed",
    "uninstall",
]


def _activate() -> None:
    from .switch.activation import activate

    activate()


# With a LIGHTNING_ATTEMPTS_* variable set, activate the switch (install, or report), as the .pth hook does:
# a process in which that hook did not run (the variable set after it started) is covered too.
if any_variable():
    after_import("agentlightning", _activate)
