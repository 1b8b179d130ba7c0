"""The switch's variables: ``LIGHTNING_ATTEMPTS_<OPTION>`` read and checked, and the one precedence of options.

Each option settable this way (``options.settable()``) is read from ``LIGHTNING_ATTEMPTS_<OPTION>``,
upper case, e.g. ``LIGHTNING_ATTEMPTS_STALE_POLICY=salvage``; ``none`` (or an empty value) means
``None``. ``resolve()`` is the one place that reads them, for the servers agentlightning builds
under the switch or ``install()``, for ``lightning-attempts serve`` and for verl's daemon.
``AttemptAwareServer`` built directly reads none, and keeps its own defaults.

A ``LIGHTNING_ATTEMPTS_*`` variable nothing reads is reported, naming the likely intended one
(``activation``).
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from _lightning_attempts_switch import OFF, ON, PREFIX, SWITCH, switched_on

from ..errors import OptionError
from ..options import parse, settable
from .logs import say

SWITCH_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {name: each.switch_default for name, each in settable() if each.has_switch_default}
)
"""The defaults of the servers ``resolve()`` serves, where they differ from ``AttemptAwareServer``'s.

Leases are on (``unresponsive_seconds``): a worker killed without a word (SIGKILL, the OOM
killer, a lost node) costs a lease, not the task timeout (verl's ``llm_timeout_seconds``, 600
or 1200 s). Only claims whose workers heartbeat are leased, so old workers, which never
heartbeat, keep their claims until the timeout, as before.
"""


SERVE_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {**SWITCH_DEFAULTS, **{name: each.serve_default for name, each in settable() if each.has_serve_default}}
)
"""The defaults of ``lightning-attempts serve``: the switch's, and the producer routes on (a trainer elsewhere)."""


LLM_BACKENDS = PREFIX + "LLM_BACKENDS"
"""``lightning-attempts serve``'s LLM backends, comma-separated, when no ``--llm-backend`` is given."""
LLM_PROXY_PORT = PREFIX + "LLM_PROXY_PORT"
"""``lightning-attempts serve``'s LLM proxy port, when no ``--llm-proxy-port`` is given."""
SERVE_VARIABLES = (LLM_BACKENDS, LLM_PROXY_PORT)
"""Variables ``serve`` reads that are no server option (``serve_llm_proxy``)."""


def variable(option: str) -> str:
    """The variable of ``option``: ``LIGHTNING_ATTEMPTS_<OPTION>``."""
    return PREFIX + option.upper()


def option_variables() -> dict[str, str]:
    """Every option's variable, to the option."""
    return {variable(name): name for name, _ in settable()}


def known_variables() -> frozenset[str]:
    """Every ``LIGHTNING_ATTEMPTS_*`` variable something reads."""
    return frozenset({SWITCH, *option_variables(), *SERVE_VARIABLES})


def unrecognised(environ: Mapping[str, str] = os.environ) -> dict[str, str | None]:
    """``LIGHTNING_ATTEMPTS_*`` variables nothing reads, each with the likely intended name (or None)."""
    known = known_variables()
    suffixes = [name.removeprefix(PREFIX) for name in known]  # the shared prefix would make every name alike

    def intended(name: str) -> str | None:
        matches = difflib.get_close_matches(name.removeprefix(PREFIX).upper(), suffixes, n=1, cutoff=0.6)
        return PREFIX + matches[0] if matches else None

    return {name: intended(name) for name in sorted(environ) if name.startswith(PREFIX) and name not in known}


def unrecognised_message(name: str, suggestion: str | None, consequence: str) -> str:
    """What to say of a variable nothing reads; ``consequence`` follows its name (e.g. ``": ignored"``)."""
    hint = f"Did you mean {suggestion}?" if suggestion else f"Known: {', '.join(sorted(known_variables()))}."
    return f"{name} is not a lightning_attempts variable{consequence}. {hint}"


def check_switch(environ: Mapping[str, str] = os.environ) -> None:
    """``OptionError`` when ``LIGHTNING_ATTEMPTS_INSTALL`` is neither on nor off."""
    value = environ.get(SWITCH, "")
    if value.strip().lower() not in (*ON, *OFF):
        raise OptionError(
            f"{SWITCH} is not a valid value: {value!r}. {', '.join(ON)} turn the switch on; "
            f"{', '.join(repr(v) for v in OFF)} turn it off."
        )


def from_variables(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The options given as ``LIGHTNING_ATTEMPTS_<OPTION>`` variables, parsed and checked.

    A value of the wrong type or out of range raises ``OptionError`` naming the variable.
    Variables that are no option are left to ``unrecognised()``.
    """
    options: dict[str, Any] = {}
    for name, option in option_variables().items():
        raw = environ.get(name)
        if raw is not None:
            try:
                options[option] = parse(option, raw)
            except OptionError as error:
                raise OptionError(f"{name} is not a valid value: {error}") from None
    return options


def from_fallback_variables(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The options given by their ``fallback_variable`` (``AGL_KEY``), checked; an empty one gives none."""
    options: dict[str, Any] = {}
    for name, each in settable():
        raw = environ.get(each.fallback_variable) if each.fallback_variable else None
        value = raw if raw is None or each.check is None else each.check(name, raw)
        if value is not None:
            options[name] = value
    return options


def resolve(
    *explicit: Mapping[str, Any], environ: Mapping[str, str] = os.environ, defaults: Mapping[str, Any] = SWITCH_DEFAULTS
) -> dict[str, Any]:
    """A server's keyword arguments, each option from the first of these that gives it:

    1. ``explicit``: what the code building the server passes, ``install(...)``'s options, ``serve``'s
       flags (where several mappings are given, a later one wins over an earlier one);
    2. its ``LIGHTNING_ATTEMPTS_<OPTION>`` variable;
    3. the option's ``fallback_variable``: ``AGL_KEY`` for ``api_key``;
    4. ``defaults``: the switch's (``SWITCH_DEFAULTS``), or ``serve``'s (``SERVE_DEFAULTS``);
    5. ``AttemptAwareServer``'s own default: an option none of the above gives is left out.

    Built from the last step up, so that each step overrides the ones below it.
    """
    resolved: dict[str, Any] = dict(defaults)  # 4
    resolved.update(from_fallback_variables(environ))  # 3
    resolved.update(from_variables(environ))  # 2
    for arguments in explicit:  # 1
        resolved.update(arguments)
    return resolved


def warn_options_ignored(environ: Mapping[str, str] = os.environ) -> None:
    """Log, at WARNING, options set while the switch is off: agentlightning's servers will not read them."""
    if switched_on(environ):
        return
    ignored = sorted(name for name in environ if name in option_variables())
    if ignored:
        say(
            logging.WARNING,
            "%s %s set but %s is not: the servers agentlightning builds in this process ignore %s unless it calls "
            "lightning_attempts.install(). Did you mean to set %s=1?",
            ", ".join(ignored),
            "is" if len(ignored) == 1 else "are",
            SWITCH,
            "it" if len(ignored) == 1 else "them",
            SWITCH,
        )
