"""The ``lightning-attempts`` command line: ``serve`` a patched server, run the ``demo``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import click
from click.core import ParameterSource

from _lightning_attempts_switch import switched_on

from . import ports
from .errors import OptionError, ServerStartError
from .hosts import client_url, is_unspecified_host
from .options import DEFAULTS, STALE_POLICIES, OptionSpec, StalePolicy, annotation, flagged, parse
from .releases import AGENTLIGHTNING_VERSION
from .serve_llm_proxy import ProxySettings, proxy_settings
from .switch.variables import SERVE_DEFAULTS, resolve, variable

if TYPE_CHECKING:
    from .llm_proxy.standalone import StandaloneProxy
    from .server import AttemptAwareServer

LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT = ParameterSource.DEFAULT
FC = TypeVar("FC", bound=Callable[..., Any])
COST_MAP = "LITELLM_LOCAL_MODEL_COST_MAP"
"""LiteLLM's variable: ``True`` reads the cost map bundled with it instead of downloading one."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lightning-attempts")
def main() -> None:
    """Attempt-aware drop-in fix for agentlightning's legacy task server."""
    # LiteLLM, which agentlightning imports, otherwise fetches its model cost map at import: offline, a stall
    # and four warnings. Our commands need no costs; a value the user set is kept.
    os.environ.setdefault(COST_MAP, "True")


def _shown(value: Any) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value).lower()


def _parsed(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A flag's value parsed and checked as its variable's would be (``options.parse``)."""
    if ctx.get_parameter_source(str(param.name)) == DEFAULT:
        return value
    try:
        return parse(param.name, value)
    except OptionError as error:
        raise click.BadParameter(str(error), ctx, param) from None


def _option_flag(name: str, each: OptionSpec) -> Callable[[FC], FC]:
    """``serve``'s flag for option ``name``: its help says its default there and the variable read in its absence."""
    flag = each.flag or "--" + name.replace("_", "-")
    default = SERVE_DEFAULTS.get(name, getattr(DEFAULTS, name))
    kind = annotation(name)
    boolean = kind in (bool, bool | None)
    shown = ("on" if default else "off") if boolean else _shown(default)  # a flag's None is not on
    help = f"{each.help} [default: {shown}]"
    if each.variable:
        fallback = f", then {each.fallback_variable}" if each.fallback_variable else ""
        help += f" [env var: {variable(name)}{fallback}]"
    if boolean:
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help)
    if typing.get_origin(kind) is Literal:
        return click.option(flag, name, type=click.Choice(typing.get_args(kind)), default=None, help=help)
    none = " | none" if type(None) in typing.get_args(kind) else ""
    return click.option(flag, name, metavar=f"{_metavar(kind)}{none}", default=None, callback=_parsed, help=help)


def _metavar(kind: Any) -> str:
    types = [t for t in typing.get_args(kind) or (kind,) if t is not type(None)]
    return "/".join(getattr(t, "__name__", str(t)).upper() for t in types)


def _option_flags(command: FC) -> FC:
    """Every option with a flag, in ``Options``' order."""
    for name, each in reversed(list(flagged())):
        command = _option_flag(name, each)(command)
    return command


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to bind (0: any free port)."
)
@click.option(
    "--llm-backend",
    "llm_backends",
    multiple=True,
    metavar="HOST:PORT",
    help="An LLM backend (vLLM's OpenAI server; host:port or http://host:port/v1) for the attempt-aware LLM proxy "
    "serve then runs beside the server; repeat for several. None: no proxy. "
    "[env var: LIGHTNING_ATTEMPTS_LLM_BACKENDS, comma-separated]",
)
@click.option(
    "--llm-proxy-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port of the LLM proxy (0: any free port), on --host, with the server's key. "
    "[default: the server's port + 1] [env var: LIGHTNING_ATTEMPTS_LLM_PROXY_PORT]",
)
@_option_flags
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    llm_backends: tuple[str, ...],
    llm_proxy_port: int | None,
    log_level: str,
    **options: Any,
) -> None:
    """Run an AttemptAwareServer in a process of its own until interrupted.

    Workers poll it as they would a trainer's server; a trainer in another process drives it over
    its producer routes (lightning_attempts.client.RemoteServer: queue tasks, publish resources,
    wait for and take results). Each server option not given here is read from its
    LIGHTNING_ATTEMPTS_<OPTION> variable, as with LIGHTNING_ATTEMPTS_INSTALL=1 and install(); an
    option given here wins. With --llm-backend, an attempt-aware LLM proxy serves beside it: the
    tasks it hands out name the proxy's port, so that shim workers call it attempt by attempt.
    """
    explicit = {name: value for name, value in options.items() if ctx.get_parameter_source(name) != DEFAULT}
    try:
        resolved = resolve(explicit, defaults=SERVE_DEFAULTS)  # every variable checked before anything slow
        proxy = proxy_settings(llm_backends, llm_proxy_port, port)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    try:
        port_held = ports.bind(host, port)  # a port in use is said now, not once agentlightning is loaded
        proxy_held = ports.bind(host, proxy.port) if proxy is not None else None
    except ServerStartError as error:
        click.echo(f"lightning-attempts: {error}", err=True)
        raise SystemExit(1) from None
    try:
        with port_held, proxy_held or contextlib.nullcontext():  # let go as each binds it, or on the way out
            click.echo(
                f"lightning-attempts: starting on {host}:{port} (loading agentlightning {AGENTLIGHTNING_VERSION})",
                err=True,
            )
            _serve(host, port, log_level, resolved, port_held, (proxy, proxy_held))
    except KeyboardInterrupt:  # Ctrl+C before it served (it takes agentlightning seconds to load)
        click.echo("lightning-attempts: interrupted before it served", err=True)
        raise SystemExit(130) from None


def _serve(
    host: str,
    port: int,
    log_level: str,
    options: dict[str, Any],
    port_held: socket.socket,
    proxy_setup: tuple[ProxySettings | None, socket.socket | None] = (None, None),
) -> None:
    """Serve; ``port_held``, bound to ``host:port`` while agentlightning loads, is let go as the server binds.

    ``proxy_setup``: the LLM proxy's settings, if any, and its port held likewise until the proxy binds it."""
    try:
        # Imports agentlightning, so the switch, if on, checks its variables here: a bad one is a usage error too.
        from .server import AttemptAwareServer

        server = AttemptAwareServer(host=host, port=port, **options)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # upstream configures uvicorn at INFO
        logging.getLogger(name).setLevel(log_level.upper())

    async def run() -> None:
        port_held.close()
        proxy = await _start_proxy(server, host, *proxy_setup)
        try:
            await server.start()
        except BaseException:
            if proxy is not None:  # it stops with the server, which never started
                await proxy.stop()
            raise
        keyed = "API key required" if server.requires_key else "no API key"
        settings = server.options
        lease = "no leases" if settings.unresponsive_seconds is None else f"lease {settings.unresponsive_seconds:g} s"
        everywhere = f", bound to {host} (every interface)" if is_unspecified_host(host) else ""
        click.echo(
            f"lightning-attempts: serving on {server.endpoint}{everywhere} (stale_policy={settings.stale_policy}, "
            f"{lease}, {keyed})",
            err=True,
        )
        if proxy is not None:
            click.echo(
                f"lightning-attempts: LLM proxy on {client_url(host, proxy.port)}/v1 in front of "
                f"{', '.join(proxy.backends)} (attempt-scoped: /rollout/ID/attempt/ID/v1; plain /v1: {keyed})",
                err=True,
            )
        await server.wait_stopped()

    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal. A port taken since serve let
    # it go fails start() before uvicorn starts, so nothing but the line below is printed.
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run())
    except ServerStartError as error:
        click.echo(f"lightning-attempts: {error}", err=True)
        raise SystemExit(1) from None


async def _start_proxy(
    server: AttemptAwareServer, host: str, settings: ProxySettings | None, held: socket.socket | None
) -> StandaloneProxy | None:
    """Start the LLM proxy beside ``server`` (before it serves, so that every task handed out names it)."""
    if settings is None:
        return None
    from .llm_proxy.standalone import StandaloneProxy

    proxy = StandaloneProxy(server, settings.backends, settings.port, server.options.task_timeout_seconds, host=host)
    if held is not None:
        held.close()
    await proxy.start()
    return proxy


@main.command("switch")
def switch_command() -> None:
    """Say in one line whether a process with this environment is patched once it imports agentlightning.

    Reads the environment as the switch would (LIGHTNING_ATTEMPTS_INSTALL and the option variables,
    AGL_KEY: shown as set or not, never the key) without importing agentlightning. Exit status: 0
    patched; 1 not patched (the switch is off, or this environment lacks its .pth hook); 2 the import
    of agentlightning would fail on a variable.
    """
    from .switch.report import HOOK, hook_installed, summary
    from .switch.variables import unrecognised, unrecognised_message

    unknown = unrecognised()
    try:
        line = summary()
        if unknown and switched_on():
            raise OptionError(" ".join(unrecognised_message(name, s, "") for name, s in unknown.items()))
    except ValueError as error:
        click.echo(f"lightning-attempts: the switch would fail the import of agentlightning: {error}", err=True)
        raise SystemExit(2) from None
    for name, suggestion in unknown.items():
        click.echo(f"lightning-attempts: {unrecognised_message(name, suggestion, ': ignored')}", err=True)
    if switched_on() and not hook_installed():
        line += f"; but this environment lacks its hook, {HOOK}: reinstall lightning_attempts, so nothing is patched"
        click.echo(line)
        raise SystemExit(1)
    click.echo(line)
    raise SystemExit(0 if switched_on() else 1)


@main.command()
@click.option("--workers", default=4, show_default=True, help="Workers; the first one straggles.")
@click.option("--batches", default=4, show_default=True, help="Training batches.")
@click.option("--batch-size", default=8, show_default=True, help="Tasks per batch.")
@click.option("--task-timeout", default=0.5, show_default=True, help="Seconds before a claim is requeued.")
@click.option("--straggle", default=2.5, show_default=True, help="The straggler's rollouts take this many timeouts.")
@click.option(
    "--fleet",
    type=click.Choice(["shim", "old", "mixed"]),
    default="mixed",
    show_default=True,
    help="Workers' client: AttemptAwareClient (shim), upstream's (old), or alternating, straggler old.",
)
@click.option("--stale-policy", type=click.Choice(STALE_POLICIES), default="reject", show_default=True)
def demo(
    workers: int,
    batches: int,
    batch_size: int,
    task_timeout: float,
    straggle: float,
    fleet: str,
    stale_policy: StalePolicy,
) -> None:
    """Show the stale-rollout failure on upstream's server and the fix, side by side."""
    from rich.console import Console

    from . import scenario
    from .demo import run_demo

    if workers < 2:
        raise click.BadParameter("the straggler needs at least one other worker", param_hint="--workers")
    kinds: list[scenario.WorkerKind] = (
        ["old" if i % 2 == 0 else "shim" for i in range(workers)] if fleet == "mixed" else [fleet] * workers  # type: ignore[list-item]
    )
    config = scenario.Scenario(
        batches=batches, batch_size=batch_size, task_timeout=task_timeout, straggle_factor=straggle
    )
    _, patched = run_demo(config, kinds, stale_policy, Console())
    raise SystemExit(0 if patched.clean else 1)
