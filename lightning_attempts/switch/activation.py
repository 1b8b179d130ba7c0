"""What the switch does in a process once agentlightning is imported: check its variables, then install or report.

The ``.pth`` hook's module (``_lightning_attempts_startup``) and ``import lightning_attempts`` each
call ``activate()`` once agentlightning is imported, when some ``LIGHTNING_ATTEMPTS_*`` variable is
set; it acts once per process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from _lightning_attempts_switch import switched_on

from ..errors import OptionError
from .install import install, installed
from .logs import say
from .report import summary
from .variables import check_switch, unrecognised, unrecognised_message, warn_options_ignored

_done: set[str] = set()
"""What ``activate()`` has done in this process (``checked``, ``reported``): the ``.pth`` hook and the package both
call it, and it acts once."""


def activate(environ: Mapping[str, str] = os.environ, *, report_ignored: bool = False) -> bool:
    """``install()`` when the switch is on, after checking every variable; say whether it did (once per process).

    With the switch on, an unrecognised variable or a bad value raises ``OptionError`` (better no
    training run than one without the options asked for); with it off, an unrecognised variable
    is logged at WARNING with what was probably meant, and, with ``report_ignored`` (a process
    that imported agentlightning without this package), so are options nothing will read.
    """
    done = _done if environ is os.environ else set[str]()
    if "checked" not in done:
        _check(environ)
        done.add("checked")
    if report_ignored and not switched_on(environ) and "reported" not in done:
        warn_options_ignored(environ)
        done.add("reported")
    return switched_on(environ) and installed()


def _check(environ: Mapping[str, str]) -> None:
    check_switch(environ)
    unknown = unrecognised(environ)
    if not switched_on(environ):
        for name, suggestion in unknown.items():
            say(logging.WARNING, "%s", unrecognised_message(name, suggestion, ": ignored"))
        return
    if unknown:
        raise OptionError(" ".join(unrecognised_message(name, s, "") for name, s in unknown.items()))
    line = summary(environ)  # fails now, on a bad value, not when agentlightning builds a server
    install()  # the servers agentlightning builds read the variables themselves: variables.resolve()
    say(logging.INFO, "%s", line)
