"""Apply ``lightning_attempts.install()`` in every process started with ``LIGHTNING_ATTEMPTS_INSTALL=1``.

verl builds its daemon, and so the legacy server, inside a Ray actor: a fresh process in
which an ``install()`` in the user's entry point never ran. The wheel therefore puts
``lightning_attempts_install.pth`` in site-packages (coverage.py's ``COVERAGE_PROCESS_START``
is the precedent). Python runs its one line at every interpreter start; with no ``LIGHTNING_ATTEMPTS_*``
variable set that is one scan of the environment's names, and this module is not even
imported.

With the variable set, ``arm()`` imports nothing of agentlightning or lightning_attempts:
it waits for ``agentlightning`` to be imported, then imports ``lightning_attempts``, whose
package initialisation calls ``install()`` with the options read from the environment
(``lightning_attempts.environment``). A process that never imports agentlightning is left
as it was. The module is top-level, outside the package, because importing the package
imports agentlightning.

With the switch off but other ``LIGHTNING_ATTEMPTS_*`` variables set (a misspelt switch such
as ``LIGHTNING_ATTEMPTS_INSTAL``, or options without the switch), the same wait ends in a
report instead: once agentlightning is imported, ``lightning_attempts`` is imported without
installing, logs a warning per unrecognised variable with the likely intended name, and one
for the options nothing will read.

Installed at the root of site-packages (also by an editable install, as a copy: reinstall
after editing it).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs an interpreter milliseconds to import: only os and sys here
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

VARIABLE = "LIGHTNING_ATTEMPTS_INSTALL"
PREFIX = "LIGHTNING_ATTEMPTS_"
_OFF = ("", "0", "false", "no", "off")


def enabled() -> bool:
    """Whether the variable asks for the attempt-aware classes in this process."""
    return os.environ.get(VARIABLE, "").strip().lower() not in _OFF


def to_report() -> bool:
    """Whether, with the switch off, other ``LIGHTNING_ATTEMPTS_*`` variables are set (to be reported)."""
    return any(name.startswith(PREFIX) and name != VARIABLE for name in os.environ)


class _InstallAfterImport:
    """Loader wrapper: executes the real loader, then brings in lightning_attempts."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self._loader  # type: ignore[union-attr]
        self._loader.exec_module(module)
        _disarm()
        _install()


class _AgentlightningFinder:
    """Meta path finder that wraps the loader of the top-level ``agentlightning`` package."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "agentlightning":
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
        spec.loader = _InstallAfterImport(spec.loader)  # type: ignore[assignment]
        return spec


_finder = _AgentlightningFinder()


def arm() -> None:
    """Install (or report the variables) as soon as agentlightning is imported in this process (idempotent)."""
    if _finder in sys.meta_path or not (enabled() or to_report()):
        return
    if "agentlightning" in sys.modules:
        _install()
    else:
        sys.meta_path.insert(0, _finder)


def _disarm() -> None:
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)


def _install() -> None:
    # Already importing (it imported agentlightning) or imported: its initialisation installs or reports.
    if "lightning_attempts" in sys.modules:
        return
    if enabled():
        __import__("lightning_attempts")  # installs: see lightning_attempts/__init__.py
        return
    try:  # the switch is off: report, and never break a process that did not ask for us
        __import__("lightning_attempts")  # logs unrecognised variables
        sys.modules["lightning_attempts.environment"].warn_options_ignored()
    except Exception as error:  # e.g. an agentlightning release lightning_attempts does not support
        import logging

        logging.getLogger("lightning_attempts").warning(
            "LIGHTNING_ATTEMPTS_* variables are set but lightning_attempts cannot check them: %s", error
        )
