"""Attempt-aware drop-in replacements for agentlightning's legacy task server and client.

Every claim of a task is an attempt with its own id; the server stores only a valid
attempt's result, at most one per task, so a slow worker's late result can no
longer land twice or in the next training batch.
"""

from __future__ import annotations

from . import environment
from .client import AttemptAwareClient, Claim
from .compat import AGENTLIGHTNING_VERSION, SUPPORTED_RELEASES
from .install import install, installed, uninstall
from .models import AttemptRollout, AttemptTask, AttemptTaskIfAny
from .server import AttemptAwareServer, ServerStartError
from .store import AttemptAwareDataStore, DropReason, StalePolicy, Submission

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
    "ServerStartError",
    "StalePolicy",
    "Submission",
    "install",
    "installed",
    "uninstall",
]

# LIGHTNING_ATTEMPTS_INSTALL=1: install now, before anyone builds a server (see environment.py).
environment.install_from_environment()
