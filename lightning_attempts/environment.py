"""The environment switch: ``LIGHTNING_ATTEMPTS_INSTALL=1``, and server options as variables.

Every Python process that sees ``LIGHTNING_ATTEMPTS_INSTALL=1`` (Ray actors, spawned and
forked workers, subprocesses) behaves as if ``install()`` had been called before it
imported agentlightning: site-packages' ``lightning_attempts_install.pth`` arms a hook at
interpreter start (``startup/_lightning_attempts_startup.py``), and this package, once
imported, installs.

Each keyword-only option of ``AttemptAwareServer`` (except ``clock``) can be given as
``LIGHTNING_ATTEMPTS_<OPTION>``, upper case, e.g. ``LIGHTNING_ATTEMPTS_STALE_POLICY=salvage``
or ``LIGHTNING_ATTEMPTS_UNRESPONSIVE_SECONDS=60``; ``none`` (or an empty value) means ``None``.
Servers built by agentlightning itself receive them; a misspelt variable or a bad value
fails loudly, naming the variable, rather than training without the options.
"""

from __future__ import annotations

import inspect
import logging
import os
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .install import install
from .server import AttemptAwareServer

logger = logging.getLogger(__name__)

SWITCH = "LIGHTNING_ATTEMPTS_INSTALL"
PREFIX = "LIGHTNING_ATTEMPTS_"
_OFF = ("", "0", "false", "no", "off")
_NOT_OPTIONS = ("clock",)


def switched_on(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``LIGHTNING_ATTEMPTS_INSTALL`` asks for the attempt-aware classes."""
    return environ.get(SWITCH, "").strip().lower() not in _OFF


def option_types() -> dict[str, Any]:
    """The server options settable from the environment, by variable name, with their types."""
    hints = typing.get_type_hints(AttemptAwareServer.__init__)
    parameters = inspect.signature(AttemptAwareServer.__init__).parameters.values()
    return {
        PREFIX + p.name.upper(): (p.name, hints[p.name])
        for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _NOT_OPTIONS
    }


def server_options(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The server options given as ``LIGHTNING_ATTEMPTS_<OPTION>`` variables, parsed and checked."""
    known = option_types()
    options: dict[str, Any] = {}
    for variable, raw in environ.items():
        if not variable.startswith(PREFIX) or variable == SWITCH:
            continue
        if variable not in known:
            raise ValueError(f"{variable} is not a lightning_attempts option; known: {', '.join(sorted(known))}")
        name, annotation = known[variable]
        options[name] = _parse(variable, raw, annotation)
    return options


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
    """``install()`` with the environment's options when the switch is on; say whether it was."""
    if not switched_on(environ):
        return False
    options = server_options(environ)
    install(**options)
    logger.debug("lightning_attempts installed from %s (options: %s)", SWITCH, sorted(options))
    return True
