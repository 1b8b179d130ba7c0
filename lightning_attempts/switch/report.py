"""``summary()``: one line of what the switch does in an environment, and ``hook_installed()``.

``summary()`` is what the switch logs once it installs and what ``lightning-attempts switch`` prints;
it never shows a key, only whether one is set. Imports nothing of agentlightning.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from _lightning_attempts_switch import SWITCH, switched_on

from ..releases import AGENTLIGHTNING_VERSION
from .variables import check_switch, resolve

PATCHED = (
    "AgentLightningServer -> AttemptAwareServer, AgentLightningClient -> AttemptAwareClient, "
    "AgentModeDaemon -> AttemptAwareDaemon (once agentlightning.verl.daemon is imported)"
)
"""The classes the switch puts in agentlightning's place (``install``)."""
HOOK = "lightning_attempts_install.pth"
"""The ``.pth`` line that arms the switch at interpreter start (``startup/``)."""


def shown(name: str, value: Any) -> str:
    """An option as the summary shows it: a key only as set or not."""
    if name == "api_key":
        return f"api_key: {'set' if value else 'none'}"
    return f"{name}={'none' if value is None else f'{value:g}' if isinstance(value, float) else value}"


def summary(environ: Mapping[str, str] = os.environ) -> str:
    """One line: whether a process with ``environ`` that imports agentlightning is patched, and with what.

    Raises what the switch would (``OptionError``) for a bad value; misspelt variables are the caller's to report.
    """
    check_switch(environ)
    options = resolve(environ=environ)  # checks every value, as the switch does
    options.setdefault("api_key", None)
    given = ", ".join(shown(name, value) for name, value in options.items())
    if not switched_on(environ):
        return f"switch off: {SWITCH} is not on, agentlightning {AGENTLIGHTNING_VERSION} is left as it is"
    return (
        f"switch on ({SWITCH}={environ[SWITCH]}): agentlightning {AGENTLIGHTNING_VERSION}'s {PATCHED}; the servers it "
        f"builds take {given}, unless the code building one passes them"
    )


def hook_installed() -> bool:
    """Whether this interpreter's site-packages carry the switch's ``.pth`` hook (else the switch does nothing)."""
    import site

    directories = [*site.getsitepackages(), site.getusersitepackages()]
    return any((Path(directory) / HOOK).is_file() for directory in directories)
