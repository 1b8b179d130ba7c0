"""install() / uninstall(): agentlightning's own modules build the attempt-aware classes, and back."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from types import ModuleType

import pytest

import lightning_attempts
from lightning_attempts import AttemptAwareClient, AttemptAwareServer
from lightning_attempts.compat import AgentLightningClient, AgentLightningServer

from .. import prewarmed

NAMES = ("AgentLightningServer", "AgentLightningClient")
UPSTREAM = {"AgentLightningServer": AgentLightningServer, "AgentLightningClient": AgentLightningClient}


def binding_modules() -> dict[str, ModuleType]:
    """Every loaded agentlightning module that binds one of the names."""
    return {
        name: module
        for name, module in list(sys.modules.items())
        if name.partition(".")[0] == "agentlightning" and any(n in vars(module) for n in NAMES)
    }


def bindings() -> dict[tuple[str, str], object]:
    return {(m, n): vars(module)[n] for m, module in binding_modules().items() for n in NAMES if n in vars(module)}


@pytest.fixture(autouse=True)
def restored() -> Iterator[None]:
    before = bindings()
    yield
    lightning_attempts.uninstall()
    assert bindings() == before


def test_install_rebinds_every_loaded_module() -> None:
    modules = binding_modules()
    # The package, the defining modules, and the trainer/runner modules of this release.
    assert {"agentlightning", "agentlightning.server", "agentlightning.client"} <= set(modules)
    assert len(modules) >= 4
    lightning_attempts.install()
    for (_, name), bound in bindings().items():
        assert issubclass(bound, AttemptAwareServer if name == "AgentLightningServer" else AttemptAwareClient)  # type: ignore[arg-type]
    import agentlightning

    server = agentlightning.AgentLightningServer(port=0)
    assert isinstance(server, AttemptAwareServer)
    client = agentlightning.AgentLightningClient(endpoint="http://127.0.0.1:1")
    assert isinstance(client, AttemptAwareClient)


def test_uninstall_restores_every_module_exactly() -> None:
    before = bindings()
    assert all(bound is UPSTREAM[name] for (_, name), bound in before.items())
    lightning_attempts.install()
    assert lightning_attempts.installed()
    lightning_attempts.uninstall()
    assert not lightning_attempts.installed()
    assert bindings() == before
    lightning_attempts.uninstall()  # harmless twice
    assert bindings() == before


def test_install_twice_equals_once() -> None:
    def installed_bases() -> dict[tuple[str, str], tuple[type, ...]]:
        return {key: bound.__mro__[1:] for key, bound in bindings().items()}  # type: ignore[attr-defined]

    lightning_attempts.install()
    once = installed_bases()
    lightning_attempts.install()
    assert installed_bases() == once
    lightning_attempts.uninstall()
    assert all(bound is UPSTREAM[name] for (_, name), bound in bindings().items())


def test_upstream_type_checks_still_pass_for_upstream_objects() -> None:
    """The trainer checks isinstance(backend, AgentLightningClient): a DevTaskLoader must still pass."""
    from agentlightning.client import DevTaskLoader

    plain = AgentLightningClient(endpoint="http://127.0.0.1:1")  # built before install()
    loader = DevTaskLoader(tasks=[{"x": 1}], resources={})
    lightning_attempts.install()
    import agentlightning

    installed_client = agentlightning.AgentLightningClient
    assert isinstance(plain, installed_client) and isinstance(loader, installed_client)
    assert issubclass(DevTaskLoader, installed_client)
    assert not isinstance(object(), installed_client)


def test_server_options_reach_servers_built_by_agentlightning() -> None:
    lightning_attempts.install(stale_policy="salvage", unresponsive_seconds=30)
    import agentlightning.server

    server = agentlightning.server.AgentLightningServer(host="127.0.0.1", port=0, task_timeout_seconds=5)
    assert (server.stale_policy, server.unresponsive_seconds) == ("salvage", 30)  # type: ignore[attr-defined]
    explicit = agentlightning.server.AgentLightningServer(port=0, stale_policy="reject")  # type: ignore[call-arg]
    assert explicit.stale_policy == "reject"  # type: ignore[attr-defined]


def test_modules_imported_after_install_pick_it_up() -> None:
    """A fresh interpreter: install() first, then import the trainer (and verl's daemon's way of importing)."""
    script = textwrap.dedent(
        """
        import lightning_attempts
        lightning_attempts.install()
        import importlib
        from agentlightning import AgentLightningServer  # what agentlightning.verl.daemon does
        try:
            trainer = importlib.import_module("agentlightning.trainer.legacy")  # 0.2+
        except ImportError:
            trainer = importlib.import_module("agentlightning.trainer")  # 0.1.x
        assert issubclass(AgentLightningServer, lightning_attempts.AttemptAwareServer), AgentLightningServer
        assert issubclass(trainer.AgentLightningClient, lightning_attempts.AttemptAwareClient)
        lightning_attempts.uninstall()
        from lightning_attempts.compat import AgentLightningClient
        assert trainer.AgentLightningClient is AgentLightningClient
        print("ok")
        """
    )
    done = prewarmed.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr


def test_reloading_agentlightning_modules_is_not_needed() -> None:
    lightning_attempts.install()
    server_module = importlib.import_module("agentlightning.server")
    assert issubclass(server_module.AgentLightningServer, AttemptAwareServer)
