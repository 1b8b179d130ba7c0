"""A second host on this machine: a network namespace joined to this one by a veth pair (root only).

``second_host()`` makes the namespace, the pair and a /24 of its own under 10.231.0.0/16
(one no route here uses yet), brings the links up, and yields the two addresses; afterwards
it removes the namespace and the link whatever happened, and checks that both are gone.
Traffic goes only between the two addresses the test made. A machine where this cannot be
done fails the test, saying why: never a skip.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class SecondHost:
    namespace: str
    here: str
    """This host's address on the pair: where the second host reaches the daemon."""
    there: str
    """The second host's address."""

    def command(self) -> list[str]:
        """The prefix that runs a command on the second host."""
        return ["ip", "netns", "exec", self.namespace]


def _ip(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *arguments], capture_output=True, text=True, timeout=30, check=False)


def _free_subnet() -> int:
    routes = _ip("-4", "route", "show", "table", "all").stdout
    candidates = [n for n in random.sample(range(256), 256) if f"10.231.{n}." not in routes]
    if not candidates:
        pytest.fail("no free /24 under 10.231.0.0/16 for the second host's veth pair")
    return candidates[0]


@contextmanager
def second_host() -> Generator[SecondHost]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail(
            "the multi-host test makes a network namespace and a veth pair (`ip netns`, `ip link`), which needs "
            "root and iproute2; CI runs as root. This machine cannot: run the verl tier as root."
        )
    tag = secrets.token_hex(3)
    namespace, here_link, there_link = f"la-test-{tag}", f"la{tag}h", f"la{tag}n"
    subnet = _free_subnet()
    host = SecondHost(namespace, f"10.231.{subnet}.1", f"10.231.{subnet}.2")
    steps = [
        ("netns", "add", namespace),
        ("link", "add", here_link, "type", "veth", "peer", "name", there_link),
        ("link", "set", there_link, "netns", namespace),
        ("addr", "add", f"{host.here}/24", "dev", here_link),
        ("link", "set", here_link, "up"),
        ("-n", namespace, "addr", "add", f"{host.there}/24", "dev", there_link),
        ("-n", namespace, "link", "set", there_link, "up"),
        ("-n", namespace, "link", "set", "lo", "up"),
    ]
    try:
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                pytest.fail(f"cannot make the second host: `ip {' '.join(step)}`: {done.stderr.strip()}")
        yield host
    finally:
        _ip("netns", "del", namespace)  # takes its end of the pair, and so the pair, with it
        _ip("link", "del", here_link)  # in case the namespace was never made or the pair not moved
        left = [name for name in (namespace,) if name in _ip("netns", "list").stdout]
        left += [name for name in (here_link,) if _ip("link", "show", name).returncode == 0]
        assert left == [], f"the second host outlived the test: {left}"
