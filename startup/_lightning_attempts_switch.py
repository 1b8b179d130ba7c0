"""The environment switch's names and its one import hook, imported by the ``.pth`` hook's module and the package.

- ``SWITCH``, ``PREFIX``, ``OFF``, ``switched_on()``: the switch, ``LIGHTNING_ATTEMPTS_INSTALL``, and
  the prefix of every variable the package reads;
- ``after_import(name, callback)``: a callback run once a module is imported, never in the middle
  of an import of lightning_attempts (which may be what imports it): the ``.pth`` hook's module
  waits so for agentlightning, ``install()`` for verl's daemon.

Top-level, outside the package, beside ``_lightning_attempts_startup``, and importing only ``os``
and ``sys``: ``import lightning_attempts`` checks the installed agentlightning release
(importlib.metadata, about 45 ms), which a process that never imports agentlightning must not
pay. Installed at the root of site-packages (also by an editable install, as a copy: reinstall
after editing it).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs an interpreter milliseconds to import: only os and sys here
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import ModuleType
    from typing import Any

SWITCH = "LIGHTNING_ATTEMPTS_INSTALL"
"""The switch: every process that sees it on behaves as if ``install()`` had been called."""
PREFIX = "LIGHTNING_ATTEMPTS_"
"""Of the switch and of every option's variable."""
ON = ("1", "true", "yes", "on")
"""The switch's values that mean on (case and surrounding spaces aside)."""
OFF = ("", "0", "false", "no", "off")
"""The switch's values that mean off; any other value is refused (``lightning_attempts.switch.activation``)."""
PACKAGE = "lightning_attempts"


def switched_on(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``LIGHTNING_ATTEMPTS_INSTALL`` asks for the attempt-aware classes: set, and not to an off value.

    A value that is neither on nor off counts as asked, so that it fails loudly rather than leaves the switch off.
    """
    return environ.get(SWITCH, "").strip().lower() not in OFF


def any_variable(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether some ``LIGHTNING_ATTEMPTS_*`` variable is set: the switch, an option, or a misspelt one to report."""
    return any(name.startswith(PREFIX) for name in environ)


# -- the import hook ----------------------------------------------------------

_waiting: dict[str, list[Callable[[], None]]] = {}
"""Module name to the callbacks waiting for its import."""
_deferred: list[tuple[str, Callable[[], None]]] = []
"""Callbacks (with their module) whose module is imported, waiting for an import of lightning_attempts to end."""
_depth: dict[int, int] = {}
"""Thread id to how many imports of lightning_attempts modules are in progress in it."""


def after_import(name: str, callback: Callable[[], None]) -> None:
    """Call ``callback()`` once module ``name`` is imported (at once if it is).

    Never in the middle of an import of lightning_attempts, which may be what imports
    ``name`` and be unfinished: then as soon as that import is done. A callback already
    waiting is not added again. A callback that raises fails the import that ran it, and
    waits again: ``name`` is imported afresh next time, and the callback with it, so that
    every import fails the same way until what made it fail is fixed.
    """
    if callback in _waiting.get(name, ()) or (name, callback) in _deferred:
        return
    if name in sys.modules:
        _run_or_defer(name, callback)
        return
    _wait(name, callback)


def forget(name: str, callback: Callable[[], None]) -> None:
    """Stop waiting to call ``callback`` for ``name`` (harmless when it does not wait)."""
    callbacks = _waiting.get(name, [])
    if callback in callbacks:
        callbacks.remove(callback)
        if not callbacks:
            del _waiting[name]
    if (name, callback) in _deferred:
        _deferred.remove((name, callback))
    _idle()


def _wait(name: str, callback: Callable[[], None], *, first: bool = False) -> None:
    callbacks = _waiting.setdefault(name, [])
    callbacks.insert(0 if first else len(callbacks), callback)
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def _ours(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _importing_ours() -> bool:
    return _depth.get(_thread_id(), 0) > 0


def _thread_id() -> int:
    import _thread  # built in: no import cost

    return _thread.get_ident()


def _run_or_defer(name: str, callback: Callable[[], None]) -> None:
    if _importing_ours():
        _deferred.append((name, callback))
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
        return
    try:
        callback()
    except BaseException:
        sys.modules.pop(name, None)  # imported afresh next time, and the callback run again
        _wait(name, callback, first=True)
        raise


def _idle() -> None:
    if not _waiting and not _deferred and _finder in sys.meta_path:
        sys.meta_path.remove(_finder)


class _AfterExec:
    """Loader wrapper: executes the real loader, then runs what waited for the module."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader = loader
        self._name = name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self._loader  # type: ignore[union-attr]
        ours, thread = _ours(self._name), _thread_id()
        if ours:
            _depth[thread] = _depth.get(thread, 0) + 1
        try:
            self._loader.exec_module(module)
        finally:
            if ours:
                _depth[thread] -= 1
        callbacks = _waiting.pop(self._name, [])
        try:
            while callbacks:
                _run_or_defer(self._name, callbacks.pop(0))
            while _deferred and not _importing_ours():
                _run_or_defer(*_deferred.pop(0))
        finally:
            for callback in reversed(callbacks):  # not run, as an earlier one failed: they wait again
                _wait(self._name, callback, first=True)
            _idle()


class _Finder:
    """Meta path finder: finds awaited modules and lightning_attempts' own as the import system would, wrapping
    their loaders (``_AfterExec``), so that callbacks run after the one and never in the middle of the other."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in _waiting and not _ours(fullname):
            return None
        spec = None
        for finder in sys.meta_path:  # what the import system would do without this finder
            find = getattr(finder, "find_spec", None)
            if finder is not self and find is not None:
                spec = find(fullname, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None:
            return None
        spec.loader = _AfterExec(spec.loader, fullname)
        return spec


_finder = _Finder()
