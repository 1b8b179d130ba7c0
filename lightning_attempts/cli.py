"""The ``lightning-attempts`` command line: ``serve`` a patched server, run the ``demo``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from . import environment
from .server.options import DEFAULTS
from .store import STALE_POLICIES, StalePolicy

LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT = ParameterSource.DEFAULT
FC = TypeVar("FC", bound=Callable[..., Any])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lightning-attempts")
def main() -> None:
    """Attempt-aware drop-in fix for agentlightning's legacy task server."""


def _seconds_or_none(ctx: click.Context, param: click.Parameter, value: str) -> float | None:
    """A positive number of seconds, or ``none`` for no limit (as its variable reads)."""
    if value.strip().lower() == "none":
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise click.BadParameter(f"{value!r} is neither a positive number of seconds nor 'none'", ctx, param)
    return seconds


def _server_option(*declarations: str, **attributes: Any) -> Callable[[FC], FC]:
    """A ``serve`` option that is also a server option: its help names the variable read in its absence."""
    name = next(d for d in declarations if d.startswith("--")).split("/")[0][2:].replace("-", "_")
    variable = environment.PREFIX + name.upper()
    attributes["help"] = f"{attributes.get('help', '')} [env var: {variable}]".strip()
    return click.option(*declarations, **attributes)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, help="Port to bind (0: any free port).")
@click.option("--task-timeout", default=300.0, show_default=True, help="Seconds before a claimed task is requeued.")
@_server_option(
    "--stale-policy",
    type=click.Choice(STALE_POLICIES),
    default=DEFAULTS.stale_policy,
    show_default=True,
    help="What to do with the result of a superseded attempt.",
)
@_server_option(
    "--require-attempt-id/--no-require-attempt-id",
    default=DEFAULTS.require_attempt_id,
    show_default=True,
    help="Refuse results that carry no attempt id (old clients).",
)
@_server_option(
    "--unresponsive-seconds",
    type=str,
    metavar="SECONDS|none",
    callback=_seconds_or_none,
    default=f"{environment.LEASE_SECONDS:g}",
    show_default=True,
    help="Lease: requeue a claim whose worker heartbeats (the shim's) after this much silence; a worker that "
    "never heartbeats keeps its claim until the task timeout. 'none': no leases.",
)
@_server_option(
    "--max-claims",
    type=click.IntRange(min=1),
    default=DEFAULTS.max_claims,
    help="Complete a task empty after this many claims.",
)
@_server_option(
    "--retry-failed",
    type=click.IntRange(min=0),
    default=DEFAULTS.retry_failed,
    show_default=True,
    help="Requeue a task whose attempt posts a failed result (no reward, no triplets) up to this many times.",
)
@_server_option(
    "--max-remembered",
    default=DEFAULTS.max_remembered,
    show_default=True,
    help="Finished tasks remembered to answer late results.",
)
@_server_option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=DEFAULTS.max_body_bytes,
    show_default=True,
    help="Larger submissions and heartbeats are refused (413), read no further than this.",
)
@_server_option(
    "--max-poll-wait",
    type=click.FloatRange(min=0),
    default=DEFAULTS.max_poll_wait,
    show_default=True,
    help="Longest a long poll (GET /task?wait=S) is held, in seconds; 0: answer at once.",
)
@_server_option(
    "--rewrite-loopback-endpoints/--no-rewrite-loopback-endpoints",
    default=DEFAULTS.rewrite_loopback_endpoints,
    help="Serve a loopback LLM endpoint in the resources as the host each worker reached this server by, so that "
    "workers on other machines reach it (verl's daemon turns it on). Default: off.",
)
@_server_option(
    "--api-key",
    default=None,
    help="Answer 401 to requests without this key (Authorization: Bearer, or x-api-key); default: the variable, "
    "else AGL_KEY. Prefer a variable: a command line is visible to other users.",
)
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, task_timeout: float, log_level: str, **options: Any) -> None:
    """Run a standalone AttemptAwareServer until interrupted.

    Each server option not given here is read from its LIGHTNING_ATTEMPTS_<OPTION> variable, as
    with LIGHTNING_ATTEMPTS_INSTALL=1 and install(); an option given here wins.
    """
    from .server import AttemptAwareServer, ServerStartError

    explicit = {name: value for name, value in options.items() if ctx.get_parameter_source(name) != DEFAULT}
    try:
        resolved = environment.resolve(explicit)
        server = AttemptAwareServer(host=host, port=port, task_timeout_seconds=task_timeout, **resolved)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # upstream configures uvicorn at INFO
        logging.getLogger(name).setLevel(log_level.upper())

    async def run() -> None:
        await server.start()
        keyed = "API key required" if server.requires_key else "no API key"
        lease = "no leases" if server.unresponsive_seconds is None else f"lease {server.unresponsive_seconds:g} s"
        click.echo(
            f"lightning-attempts: serving on {server.endpoint} (stale_policy={server.stale_policy}, {lease}, {keyed})",
            err=True,
        )
        await server.wait_stopped()

    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal. A port in use fails start()
    # before uvicorn starts, so nothing but the line below is printed.
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run())
    except ServerStartError as error:
        click.echo(f"lightning-attempts: {error}", err=True)
        raise SystemExit(1) from None


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
