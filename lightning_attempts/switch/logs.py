"""The switch's logger and ``say()``, its one way to write a line.

The switch acts as agentlightning is imported, usually before the process configures logging, when
Python would drop an INFO record and print a WARNING's bare message. ``say()`` hands the record to
logging where it is configured (logger ``lightning_attempts.environment``), and otherwise writes it to
stderr as ``LEVEL lightning_attempts.environment: message``, so that each line says what it is and whose.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

logger = logging.getLogger("lightning_attempts.environment")  # the switch's logger: the docs and log filters name it

FORMAT = "%(levelname)s %(name)s: %(message)s"
"""A line written to stderr while logging is not configured."""


def say(level: int, message: str, *args: Any) -> None:
    """Log ``message % args`` at ``level``; to stderr, with level and logger, while logging is not configured."""
    if logger.hasHandlers():
        logger.log(level, message, *args)
        return
    record = logger.makeRecord(logger.name, level, __file__, 0, message, args, None)
    sys.stderr.write(logging.Formatter(FORMAT).format(record) + "\n")
