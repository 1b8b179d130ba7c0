"""Rebind verl's ``AgentModeDaemon`` to ``AttemptAwareDaemon`` once ``agentlightning.verl.daemon`` is imported.

``install()`` calls ``arm()``. Importing the daemon imports verl and torch, so nothing here
imports it: when the module is already loaded the names are rebound at once, otherwise a
meta path finder waits for its import and rebinds right after the module has executed,
before ``agentlightning.verl.trainer`` (``from .daemon import AgentModeDaemon``) or the
package's star import reads the name. A process that never imports the daemon is left as it
was. ``disarm()`` (from ``uninstall()``) removes the finder and binds upstream's class back.

The name is rebound to ``AttemptAwareDaemon`` itself, a module-level class: the driver of
``run_ppo`` (0.2+) hands the class to verl's Ray actor, which unpickles it by reference. So
the actor may import ``lightning_attempts.verl.daemon`` first, which imports upstream's daemon
before our class exists: then ``lightning_attempts.verl.daemon`` calls ``defined()`` once it
has defined it.
"""

from __future__ import annotations

import importlib
import sys
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

DAEMON_MODULE = "agentlightning.verl.daemon"
NAME = "AgentModeDaemon"
_OURS_MODULE = "lightning_attempts.verl.daemon"

_bound: dict[str, type] = {}
"""While rebound: ``{"upstream": upstream's class, "ours": AttemptAwareDaemon}``."""
_armed: list[bool] = [False]
"""Whether ``install()`` is in effect (between ``arm()`` and ``disarm()``)."""


class _RebindAfterExec(Loader):
    """Loader wrapper: executes the daemon module, then rebinds its ``AgentModeDaemon``."""

    def __init__(self, loader: Loader) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        module.__loader__ = self._loader
        self._loader.exec_module(module)
        _rebind_now()


class _DaemonFinder(MetaPathFinder):
    """Finds ``agentlightning.verl.daemon`` as the import system would, and wraps its loader."""

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != DAEMON_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RebindAfterExec(spec.loader)
                return spec
        return None


_finder = _DaemonFinder()


def arm() -> None:
    """Rebind now if the daemon module is loaded, else as soon as it is imported (idempotent)."""
    _armed[0] = True
    if DAEMON_MODULE in sys.modules:
        _rebind_now()
    elif _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def disarm() -> None:
    """Stop waiting for the import; bind upstream's class back wherever ours is bound."""
    _armed[0] = False
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    if _bound:
        _replace(_bound["ours"], _bound["upstream"])
        _bound.clear()


def rebound() -> bool:
    """Whether verl's ``AgentModeDaemon`` is currently ours."""
    return bool(_bound)


def defined(ours: type) -> None:
    """Called by ``lightning_attempts.verl.daemon`` once ``AttemptAwareDaemon`` exists: rebind if armed."""
    if _armed[0] and not _bound:
        _rebind_to(ours)


def _rebind_now() -> None:
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    importing = sys.modules.get(_OURS_MODULE)
    if importing is not None and not hasattr(importing, "AttemptAwareDaemon"):
        return  # our module is importing upstream's right now: it calls defined() when done
    _rebind_to(importlib.import_module(_OURS_MODULE).AttemptAwareDaemon)


def _rebind_to(ours: type) -> None:
    upstream = getattr(sys.modules.get(DAEMON_MODULE), NAME, None)
    if upstream is None or upstream is ours:  # no such class in this release, or already ours
        return
    _bound.update(upstream=upstream, ours=ours)
    _replace(upstream, ours)


def _replace(old: type, new: type) -> None:
    """Bind ``new`` wherever a loaded agentlightning module binds ``old`` as ``AgentModeDaemon``."""
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] == "agentlightning" and module.__dict__.get(NAME) is old:
            setattr(module, NAME, new)
