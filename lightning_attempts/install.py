"""``install()`` / ``uninstall()``: make agentlightning itself use the attempt-aware classes.

verl's ``AgentModeDaemon`` constructs ``AgentLightningServer`` itself and the trainer
builds ``AgentLightningClient`` from a URL, so there is no class for the user to swap.
``install()`` rebinds those two names in every loaded ``agentlightning`` module that bound
them, including the defining modules ``agentlightning.server`` and ``agentlightning.client``
and the package itself: a module imported later (``from agentlightning import
AgentLightningServer``) reads the rebound name, so no import hook is needed. verl's
``AgentModeDaemon`` becomes ``AttemptAwareDaemon`` the same way, but only once
``agentlightning.verl.daemon`` is imported (``verl/hook.py``), as importing it imports verl and torch.

The name is rebound to a subclass of ours whose ``isinstance`` / ``issubclass`` answer as
upstream's class would: upstream code checks ``isinstance(backend, AgentLightningClient)``,
and a ``DevTaskLoader`` or a client built before ``install()`` must still pass. Objects
built before ``install()`` stay what they are.

A server built by agentlightning under ``install()`` takes each option from the code that
builds it, else from ``install(...)``, else from its ``LIGHTNING_ATTEMPTS_<OPTION>``
variable, and ``api_key`` finally from ``AGL_KEY`` (``environment.resolve``, read when the
server is built, e.g. inside verl's Ray actor). ``AGL_KEY`` is the variable that
``AttemptAwareClient`` sends, so one variable in the job's environment turns keys on at both
ends. ``AttemptAwareServer`` built directly reads no variable.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from . import compat
from .client import AttemptAwareClient
from .environment import resolve
from .server import AttemptAwareServer
from .verl import hook as verl_hook

_UPSTREAM: dict[str, type] = {
    "AgentLightningServer": compat.AgentLightningServer,
    "AgentLightningClient": compat.AgentLightningClient,
}
_installed: dict[str, type] = {}


class _UpstreamIdentity(type):
    """Type checks against an installed class answer as its upstream original would."""

    _upstream: type

    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, cls._upstream)

    def __subclasscheck__(cls, subclass: type) -> bool:
        return issubclass(subclass, cls._upstream)


def _installable(name: str, ours: type, options: dict[str, Any], from_env: Callable[[], dict[str, Any]]) -> type:
    """A subclass of ``ours`` named like upstream's, built with ``options`` unless overridden.

    ``from_env()`` gives defaults read when an instance is built, below ``options``.
    """

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        super(cls, self).__init__(*args, **{**from_env(), **options, **kwargs})

    namespace = {"__init__": __init__, "__module__": __name__, "__doc__": ours.__doc__, "_upstream": _UPSTREAM[name]}
    cls = _UpstreamIdentity(name, (ours,), namespace)
    return cls


def _agentlightning_modules() -> list[Any]:
    return [module for name, module in list(sys.modules.items()) if name.partition(".")[0] == "agentlightning"]


def install(**server_options: Any) -> None:
    """Make agentlightning's ``AgentLightningServer`` and ``AgentLightningClient`` the attempt-aware ones.

    Idempotent: calling it again only updates ``server_options``, the keyword options
    (``stale_policy``, ``unresponsive_seconds``, ``api_key``, ...) that servers built by
    agentlightning itself (e.g. verl's daemon) receive. An option given neither here nor by
    the code building the server comes from its ``LIGHTNING_ATTEMPTS_<OPTION>`` variable
    (``api_key`` then from ``AGL_KEY``), read when the server is built: calling ``install()``
    in a process the switch already installed keeps the variables' options.
    ``uninstall()`` undoes it.
    """
    uninstall()
    _installed["AgentLightningServer"] = _installable(
        "AgentLightningServer", AttemptAwareServer, server_options, _server_options_from_env
    )
    _installed["AgentLightningClient"] = _installable("AgentLightningClient", AttemptAwareClient, {}, dict)
    _rebind({_UPSTREAM[name]: _installed[name] for name in _UPSTREAM})
    verl_hook.arm()  # verl's AgentModeDaemon too, once agentlightning.verl.daemon is (or when it is) imported


def _server_options_from_env() -> dict[str, Any]:
    return resolve({})


def uninstall() -> None:
    """Give every agentlightning module its upstream classes back. Harmless when not installed."""
    verl_hook.disarm()
    _rebind({installed: _UPSTREAM[name] for name, installed in _installed.items()})
    _installed.clear()


def installed() -> bool:
    """Whether ``install()`` is in effect."""
    return bool(_installed)


def _rebind(replacements: dict[type, type]) -> None:
    for module in _agentlightning_modules():
        for name in _UPSTREAM:
            bound = module.__dict__.get(name)
            if bound is not None and bound in replacements:
                setattr(module, name, replacements[bound])
