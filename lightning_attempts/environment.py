"""The environment switch, ``LIGHTNING_ATTEMPTS_INSTALL=1``, and the one source of server options.

Every Python process that sees ``LIGHTNING_ATTEMPTS_INSTALL=1`` (Ray actors, spawned and
forked workers, subprocesses) behaves as if ``install()`` had been called before it
imported agentlightning: site-packages' ``lightning_attempts_install.pth`` arms a hook at
interpreter start (``startup/_lightning_attempts_startup.py``), and this package, once
imported, installs.

Each keyword-only option of ``AttemptAwareServer`` (except ``clock``) can be given as
``LIGHTNING_ATTEMPTS_<OPTION>``, upper case, e.g. ``LIGHTNING_ATTEMPTS_STALE_POLICY=salvage``
or ``LIGHTNING_ATTEMPTS_UNRESPONSIVE_SECONDS=60``; ``none`` (or an empty value) means ``None``.
``resolve()`` is the one place that reads them, for the servers agentlightning builds under
the switch or ``install()``, for ``lightning-attempts serve`` and for verl's daemon, with
one precedence: an explicit argument, then the variable, then (``api_key`` only)
``AGL_KEY``, then ``SWITCH_DEFAULTS``, then the server's default. ``AttemptAwareServer``
built directly reads none, and keeps its own defaults.

A ``LIGHTNING_ATTEMPTS_*`` variable nothing recognises is reported, naming the likely
intended variable: with the switch on it fails the import (better no training run than one
without the options asked for), with it off it is a warning. Options set while the switch
is off are reported by the startup hook in processes that import agentlightning without
this package, where nothing reads them.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import typing
from collections.abc import Mapping
from functools import cache
from types import MappingProxyType
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .auth import KEY_ENV, validate_key
from .server import AttemptAwareServer, ServerOptions

logger = logging.getLogger(__name__)

SWITCH = "LIGHTNING_ATTEMPTS_INSTALL"
PREFIX = "LIGHTNING_ATTEMPTS_"
_OFF = ("", "0", "false", "no", "off")
_NOT_OPTIONS = ("clock",)

LEASE_SECONDS = 60.0
"""The lease where the switch puts the server: a claim whose worker heartbeats is requeued after this much silence."""

SWITCH_DEFAULTS: Mapping[str, Any] = MappingProxyType({"unresponsive_seconds": LEASE_SECONDS})
"""Defaults of the servers ``resolve()`` serves, where they differ from ``AttemptAwareServer``'s.

Leases are on: a worker killed without a word (SIGKILL, the OOM killer, a lost node)
costs ``LEASE_SECONDS``, not the task timeout (verl's ``llm_timeout_seconds``, 600 or
1200 s). Only claims whose workers heartbeat are leased (the shim's, which beat from a
thread every third of the lease), so old workers, which never heartbeat, keep their claims
until the timeout, as before. ``LIGHTNING_ATTEMPTS_UNRESPONSIVE_SECONDS=none`` turns leases off.
"""


def switched_on(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``LIGHTNING_ATTEMPTS_INSTALL`` asks for the attempt-aware classes."""
    return environ.get(SWITCH, "").strip().lower() not in _OFF


@cache
def option_types() -> dict[str, tuple[str, Any]]:
    """The server options settable from the environment: variable name to (option name, type)."""
    hints = typing.get_type_hints(AttemptAwareServer.__init__)
    parameters = inspect.signature(AttemptAwareServer.__init__).parameters.values()
    return {
        PREFIX + p.name.upper(): (p.name, hints[p.name])
        for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _NOT_OPTIONS
    }


def known_variables() -> frozenset[str]:
    """Every ``LIGHTNING_ATTEMPTS_*`` variable something reads."""
    return frozenset({SWITCH, *option_types()})


def unrecognised(environ: Mapping[str, str] = os.environ) -> dict[str, str | None]:
    """``LIGHTNING_ATTEMPTS_*`` variables nothing reads, each with the likely intended name (or None)."""
    known = known_variables()
    suffixes = [name.removeprefix(PREFIX) for name in known]  # the shared prefix would make every name alike

    def intended(name: str) -> str | None:
        matches = difflib.get_close_matches(name.removeprefix(PREFIX).upper(), suffixes, n=1, cutoff=0.6)
        return PREFIX + matches[0] if matches else None

    return {name: intended(name) for name in sorted(environ) if name.startswith(PREFIX) and name not in known}


def _unrecognised_message(name: str, suggestion: str | None, consequence: str) -> str:
    hint = f"Did you mean {suggestion}?" if suggestion else f"Known: {', '.join(sorted(known_variables()))}."
    return f"{name} is not a lightning_attempts variable{consequence}. {hint}"


def server_options(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The server options given as ``LIGHTNING_ATTEMPTS_<OPTION>`` variables, parsed and checked.

    A value of the wrong type or out of range (``ServerOptions``' checks) raises ``ValueError``
    naming the variable. Variables that are no option are left to ``unrecognised()``.
    """
    options: dict[str, Any] = {}
    for variable, (name, annotation) in option_types().items():
        raw = environ.get(variable)
        if raw is not None:
            options[name] = value = _parse(variable, raw, annotation)
            try:
                ServerOptions(**{name: value})
            except ValueError as error:
                raise ValueError(f"{variable} is not a valid value: {error}") from None
    return options


def resolve(explicit: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """A server's keyword arguments: ``explicit`` ones, then the variables, then ``AGL_KEY`` for ``api_key``,
    then ``SWITCH_DEFAULTS``.

    What is in none of them is left out, so the server's own default applies.
    """
    key = validate_key(environ.get(KEY_ENV))
    fallback: dict[str, Any] = {} if key is None else {"api_key": key}
    return {**SWITCH_DEFAULTS, **fallback, **server_options(environ), **explicit}


def _parse(variable: str, raw: str, annotation: Any) -> Any:
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    if raw.strip().lower() in ("", "none", "null") and _accepts_none(adapter):
        return None
    try:
        return adapter.validate_json(raw)  # numbers, true/false
    except ValidationError:
        pass
    try:
        return adapter.validate_python(raw.strip())  # plain words: salvage, yes
    except ValidationError as error:
        message = "; ".join(str(e["msg"]) for e in error.errors())
        raise ValueError(f"{variable} is not a valid value: {message}") from None


def _accepts_none(adapter: TypeAdapter[Any]) -> bool:
    try:
        adapter.validate_python(None)
    except ValidationError:
        return False
    return True


def install_from_environment(environ: Mapping[str, str] = os.environ) -> bool:
    """``install()`` when the switch is on, after checking every variable; say whether it did.

    With the switch on, an unrecognised variable or a bad value raises; with it off, an
    unrecognised variable is logged at WARNING with the likely intended name.
    """
    unknown = unrecognised(environ)
    if not switched_on(environ):
        for name, suggestion in unknown.items():
            logger.warning("%s", _unrecognised_message(name, suggestion, ": ignored"))
        return False
    if unknown:
        raise ValueError(" ".join(_unrecognised_message(name, s, "") for name, s in unknown.items()))
    options = server_options(environ)  # fail now, not when agentlightning builds a server
    from .install import install

    install()  # the servers agentlightning builds read the variables themselves: resolve()
    logger.debug("lightning_attempts installed from %s (options: %s)", SWITCH, sorted(options))
    return True


def warn_options_ignored(environ: Mapping[str, str] = os.environ) -> None:
    """Log, at WARNING, options set while the switch is off: agentlightning's servers will not read them.

    The startup hook calls this in a process that imported agentlightning on its own.
    """
    if switched_on(environ):
        return
    ignored = sorted(name for name in environ if name in option_types())
    if ignored:
        logger.warning(
            "%s %s set but %s is not: the servers agentlightning builds in this process ignore %s unless it calls "
            "lightning_attempts.install(). Did you mean to set %s=1?",
            ", ".join(ignored),
            "is" if len(ignored) == 1 else "are",
            SWITCH,
            "it" if len(ignored) == 1 else "them",
            SWITCH,
        )
