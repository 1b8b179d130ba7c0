"""The guide's list of the server's new options is the options themselves: a new field must be named there."""

from __future__ import annotations

import re

from lightning_attempts.options import ServerArguments

from ..paths import GUIDE


def test_the_guide_names_every_keyword_option_of_the_server() -> None:
    guide = " ".join(GUIDE.read_text().split())
    match = re.search(r"New options are keyword-only, each a field of .*?: (.*?)\. The differences", guide)
    assert match, "migration_guide.md section 1 no longer lists the new options"
    named = re.findall(r"`(\w+)`", match.group(1))
    assert named == list(ServerArguments.__annotations__)  # every option, in the order of Options' fields
