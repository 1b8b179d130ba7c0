"""The environment switch's bootstrap, run by ``lightning_attempts_install.pth`` at every interpreter start.

verl builds its daemon, and so the legacy server, inside a Ray actor: a fresh process in
which an ``install()`` in the user's entry point never ran. The wheel therefore puts
``lightning_attempts_install.pth`` in site-packages (coverage.py's ``COVERAGE_PROCESS_START``
is the precedent). Python runs its one line at every interpreter start; with no
``LIGHTNING_ATTEMPTS_*`` variable set that is one scan of the environment's names, and this
module is not even imported.

With such a variable set, ``arm()`` waits for ``agentlightning`` to be imported (the import
hook of ``_lightning_attempts_switch``), then calls ``lightning_attempts.switch.activation.activate()``:
with ``LIGHTNING_ATTEMPTS_INSTALL`` on it checks the variables and installs, otherwise it reports
the variables nothing will read. A process that never imports agentlightning is left as it was.
Nothing in the package imports this module.
"""

from __future__ import annotations

import sys

from _lightning_attempts_switch import PACKAGE, after_import, any_variable, switched_on

ACTIVATION = PACKAGE + ".switch.activation"


def arm() -> None:
    """Activate the switch once agentlightning is imported in this process, if any of its variables is set."""
    if any_variable():
        after_import("agentlightning", _activate)


def _activate() -> None:
    # Options set without the switch are worth a warning only where nothing of ours reads them: not in a
    # process that imported lightning_attempts itself (lightning-attempts serve, a script calling install()).
    report_ignored = PACKAGE not in sys.modules
    try:
        __import__(ACTIVATION)
        sys.modules[ACTIVATION].activate(report_ignored=report_ignored)
    except Exception as error:
        if switched_on():  # asked for: better no training run than one without the fix
            raise
        import logging  # the switch is off: report, and never break a process that did not ask for us

        logging.getLogger(PACKAGE).warning(
            "LIGHTNING_ATTEMPTS_* variables are set but lightning_attempts cannot check them: %s", error
        )
