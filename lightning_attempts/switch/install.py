"""``install()`` / ``uninstall()``: make agentlightning itself use the attempt-aware classes.

verl's ``AgentModeDaemon`` constructs ``AgentLightningServer`` itself and the trainer
builds ``AgentLightningClient`` from a URL, so there is no class for the user to swap.
``install()`` rebinds those two names in every loaded ``agentlightning`` module that bound
them, including the defining modules ``agentlightning.server`` and ``agentlightning.client``
and the package itself: a module imported later (``from agentlightning import
AgentLightningServer``) reads the rebound name, so no import hook is needed for them.

verl's ``AgentModeDaemon`` becomes ``AttemptAwareDaemon`` the same way, but only once
``agentlightning.verl.daemon`` is imported (the bootstrap's ``after_import``), as importing
it imports verl and torch: a process that never imports it is left as it was. The name is
rebound to ``AttemptAwareDaemon`` itself, a module-level class: the driver of ``run_ppo``
(0.2+) hands the class to verl's Ray actor, which unpickles it by reference.

The server and client names are rebound to subclasses of ours whose ``isinstance`` /
``issubclass`` answer as upstream's class would: upstream code checks
``isinstance(backend, AgentLightningClient)``, and a ``DevTaskLoader`` or a client built
before ``install()`` must still pass. Objects built before ``install()`` stay what they are.

A server built by agentlightning under ``install()`` takes its options by ``variables.resolve``:
from the code that builds it, else from ``install(...)``, else from its
``LIGHTNING_ATTEMPTS_<OPTION>`` variable, and ``api_key`` finally from ``AGL_KEY``, read when the
server is built (e.g. inside verl's Ray actor). ``AGL_KEY`` is the variable that
``AttemptAwareClient`` sends, so one variable in the job's environment turns keys on at both ends.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from typing_extensions import Unpack

from _lightning_attempts_switch import after_import, forget

from .. import compat
from ..client import AttemptAwareClient
from ..options import Options, ServerArguments
from ..server import AttemptAwareServer
from .variables import resolve

DAEMON_MODULE = "agentlightning.verl.daemon"
DAEMON = "AgentModeDaemon"
_OURS_DAEMON_MODULE = "lightning_attempts.verl.daemon"

_UPSTREAM: dict[str, type] = {
    "AgentLightningServer": compat.AgentLightningServer,
    "AgentLightningClient": compat.AgentLightningClient,
}
_installed: dict[str, type] = {}
_server_options: dict[str, Any] = {}
"""``install(...)``'s options, which servers built by agentlightning receive (``variables.resolve``)."""
_daemon: dict[str, type] = {}
"""While verl's daemon is rebound: ``{"upstream": upstream's class, "ours": AttemptAwareDaemon}``."""


class _UpstreamIdentity(type):
    """Type checks against an installed class answer as its upstream original would."""

    _upstream: type

    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, cls._upstream)

    def __subclasscheck__(cls, subclass: type) -> bool:
        return issubclass(subclass, cls._upstream)


class InstalledServer(AttemptAwareServer, metaclass=_UpstreamIdentity):
    """What agentlightning builds as ``AgentLightningServer`` under ``install()``: options by ``variables.resolve``."""

    _upstream = compat.AgentLightningServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **resolve(_server_options, kwargs))


class InstalledClient(AttemptAwareClient, metaclass=_UpstreamIdentity):
    """What agentlightning builds as ``AgentLightningClient`` under ``install()``.

    A module-level class, so that an instance pickles by reference: the trainer pickles itself,
    its client with it, into each worker it spawns (the ``spawn`` and ``forkserver`` start methods).
    """

    _upstream = compat.AgentLightningClient


_INSTALLED = {"AgentLightningServer": InstalledServer, "AgentLightningClient": InstalledClient}


def install(**server_options: Unpack[ServerArguments]) -> None:
    """Make agentlightning's ``AgentLightningServer`` and ``AgentLightningClient`` the attempt-aware ones.

    Idempotent: calling it again only updates ``server_options``, the keyword options
    (``stale_policy``, ``unresponsive_seconds``, ``api_key``, ...) that servers built by
    agentlightning itself (e.g. verl's daemon) receive. An option given neither here nor by
    the code building the server comes from its ``LIGHTNING_ATTEMPTS_<OPTION>`` variable
    (``api_key`` then from ``AGL_KEY``), read when the server is built: calling ``install()``
    in a process the switch already installed keeps the variables' options.
    ``uninstall()`` undoes it.
    """
    Options(**server_options)  # checked now (OptionError), as the variables are, not when agentlightning builds one
    uninstall()
    _server_options.update(server_options)
    _installed.update(_INSTALLED)
    _rebind({_UPSTREAM[name]: _installed[name] for name in _UPSTREAM})
    after_import(DAEMON_MODULE, _rebind_daemon)  # verl's AgentModeDaemon too, once (or now if) it is imported


def uninstall() -> None:
    """Give every agentlightning module its upstream classes back. Harmless when not installed."""
    forget(DAEMON_MODULE, _rebind_daemon)
    if _daemon:
        _replace(DAEMON, _daemon["ours"], _daemon["upstream"])
        _daemon.clear()
    _rebind({installed: _UPSTREAM[name] for name, installed in _installed.items()})
    _installed.clear()
    _server_options.clear()


def installed() -> bool:
    """Whether ``install()`` is in effect."""
    return bool(_installed)


def _rebind(replacements: dict[type, type]) -> None:
    for module in _agentlightning_modules():
        for name in _UPSTREAM:
            bound = module.__dict__.get(name)
            if bound is not None and bound in replacements:
                setattr(module, name, replacements[bound])


def _rebind_daemon() -> None:
    """``agentlightning.verl.daemon`` is imported: ``AttemptAwareDaemon`` is bound wherever its class was."""
    ours: type = importlib.import_module(_OURS_DAEMON_MODULE).AttemptAwareDaemon
    upstream = getattr(sys.modules.get(DAEMON_MODULE), DAEMON, None)
    if upstream is None or upstream is ours:  # no such class in this release, or already ours
        return
    _daemon.update(upstream=upstream, ours=ours)
    _replace(DAEMON, upstream, ours)


def _replace(name: str, old: type, new: type) -> None:
    """Bind ``new`` wherever a loaded agentlightning module binds ``old`` as ``name``."""
    for module in _agentlightning_modules():
        if module.__dict__.get(name) is old:
            setattr(module, name, new)


def _agentlightning_modules() -> list[Any]:
    return [module for name, module in list(sys.modules.items()) if name.partition(".")[0] == "agentlightning"]
