"""Options are checked when given, by whoever: a wrong type or a value out of range names the option."""

from __future__ import annotations

import math
from typing import Any

import pytest

import lightning_attempts
from lightning_attempts import AttemptAwareServer, OptionError
from lightning_attempts.options import DEFAULTS, Options


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"api_key": ...}, "api_key must be a valid string, not Ellipsis"),
        ({"max_claims": "three"}, "max_claims must be a valid integer, not 'three'"),
        ({"require_attempt_id": 1}, "require_attempt_id must be a valid boolean, not 1"),
        ({"clock": 5}, "clock must be callable"),
        ({"task_timeout_seconds": -1}, "task_timeout_seconds must be a finite number of seconds above 0"),
        ({"task_timeout_seconds": math.inf}, "task_timeout_seconds must be a finite number of seconds above 0"),
        ({"task_budget": 0.5}, "task_budget must be at least 1"),
    ],
)
def test_a_bad_option_is_refused_naming_it(given: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionError, match=message.replace("(", r"\(")):
        Options(**given)
    with pytest.raises(ValueError, match=message.split(" must")[0]):  # an OptionError is a ValueError
        AttemptAwareServer(port=0, **given)


def test_an_int_is_taken_for_a_float_and_defaults_cost_no_check() -> None:
    assert Options(task_timeout_seconds=600, max_poll_wait=0).task_timeout_seconds == 600.0
    assert Options() == DEFAULTS


def test_install_checks_its_options_when_called() -> None:
    """Taken literally, README's old install(api_key=...) was accepted, and the next server failed deep inside."""
    with pytest.raises(OptionError, match="api_key must be a valid string"):
        lightning_attempts.install(api_key=...)  # pyright: ignore[reportArgumentType]
    with pytest.raises(OptionError, match="max_claims must be at least 1"):
        lightning_attempts.install(max_claims=0)
    assert not lightning_attempts.installed()
