"""Benchmark AttemptAwareServer against upstream's AgentLightningServer, same load, same run.

    python -m benchmarks            # full run (a few minutes on 2 cores)
    python -m benchmarks --quick    # tiny sizes, to check it still works

Throughput is measured in rounds (``--rounds``, 5; 2 with ``--quick``), the servers taking turns;
the table gives each figure's median and range (min to max) over the rounds, and the ratio's,
round by round, with the load average over the run and its length: on a shared machine one
figure says little.

Each server runs in its own process and the aiohttp load generator in another. Measured
for both: claim+submit cycles per second, server CPU per cycle (from the server process),
``/task`` p50/p99 with claims in flight, memory per claim in flight, and memory while a
million tasks are completed (the trainer retrieving results as it goes). With idle
workers polling as each server's client does (upstream: every ``poll_interval``, 5 s;
ours: long polls): how long a batch queued at once takes to reach an idle fleet, the
requests an idle worker sends per minute, and the server's CPU with 1,000 idle workers. Writes
``benchmarks/results/results.json`` and ``results.md`` (and ``latency.png`` when
matplotlib is installed; ``--output`` puts them elsewhere), and prints the markdown.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).parent / "results"
KINDS = ("upstream", "patched")
VARIANTS = {"patched_uvloop": "on uvloop", "patched_h11": "with h11 instead of httptools"}
"""Ours under other settings (``--compare-loops``); both servers run on asyncio with httptools otherwise."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def background(
    command: list[str], ready: Callable[[], object], failed: Callable[[str], Exception], *, seconds: float, lines: int
) -> Generator[subprocess.Popen[bytes]]:
    """Run ``command`` from the checkout (stdout dropped) until ``ready()`` stops raising ``httpx.HTTPError``; end it
    afterwards. Raises ``failed(its last stderr lines)`` when it exits, or ``seconds`` pass, before it is ready."""
    environment = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            command, cwd=Path(__file__).parent.parent, env=environment, stdout=subprocess.DEVNULL, stderr=errors
        )
        try:
            deadline = time.monotonic() + seconds
            while True:
                try:
                    ready()
                    break
                except httpx.HTTPError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        errors.seek(0)
                        raise failed("".join(errors.readlines()[-lines:])) from None
                    time.sleep(0.1)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


@contextmanager
def server_process(kind: str, loop: str = "asyncio", http: str = "auto") -> Generator[str]:
    """Start one server under test in its own process; yield its endpoint; end it."""
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.server_process", kind, str(port), "--loop", loop, "--http", http]
    endpoint = f"http://127.0.0.1:{port}"

    def ready() -> None:
        httpx.get(f"{endpoint}/bench/usage", timeout=2).raise_for_status()

    def failed(said: str) -> Exception:  # uvicorn's access log goes to stdout; stderr says why it did not start
        return RuntimeError(f"the {kind} server did not start; it said:\n{said}")

    with background(command, ready, failed, seconds=120, lines=20):
        yield endpoint


def control(endpoint: str, path: str, **params: Any) -> dict[str, Any]:
    response = httpx.post(f"{endpoint}/bench/{path}", params=params, timeout=3600)
    response.raise_for_status()
    return response.json()


def usage(endpoint: str) -> dict[str, float]:
    return httpx.get(f"{endpoint}/bench/usage", timeout=60).json()


def load(mode: str, endpoint: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.load", mode, endpoint, *args],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def throughput(
    servers: dict[str, tuple[str, str, str]], loops: int, seconds: float, rounds: int
) -> dict[str, dict[str, Any]]:
    """Claim+submit cycles per second and server CPU per cycle, for each server.

    ``servers`` maps a name to (kind, loop, http). All of them run at once (an idle one
    costs nothing) and take turns under load, ``rounds`` times: a shared machine's drift
    then falls on every server alike. Each figure is the median over the rounds.
    """
    with ExitStack() as stack:
        endpoints = {name: stack.enter_context(server_process(*spec)) for name, spec in servers.items()}
        for endpoint in endpoints.values():
            control(endpoint, "queue", n=int(rounds * seconds * 8000) + 5000)  # more than 2 cores can serve
            load("cycles", endpoint, "--loops", str(loops), "--seconds", "1")  # warm-up
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        for _ in range(rounds):
            for name, endpoint in endpoints.items():
                before = usage(endpoint)
                result = load("cycles", endpoint, "--loops", str(loops), "--seconds", str(seconds))
                after = usage(endpoint)
                cpu_us = (after["cpu"] - before["cpu"]) / max(result["cycles"], 1) * 1e6
                runs[name].append({**result, "server_cpu_us_per_cycle": cpu_us})
    return {
        name: {
            "cycles_per_second": statistics.median(r["cycles_per_second"] for r in rounds_of),
            "server_cpu_us_per_cycle": statistics.median(r["server_cpu_us_per_cycle"] for r in rounds_of),
            "cycles": sum(r["cycles"] for r in rounds_of),
            "failed": sum(r["failed"] for r in rounds_of),
            "rounds": rounds_of,
        }
        for name, rounds_of in runs.items()
    }


def latency(kind: str, in_flight: list[int], probes: int) -> dict[str, Any]:
    points: list[dict[str, Any]] = []
    with server_process(kind) as endpoint:
        control(endpoint, "queue", n=max(in_flight) + probes * (len(in_flight) + 1))
        baseline = usage(endpoint)["rss"]
        claimed = 0
        for target in sorted(in_flight):
            control(endpoint, "claim", n=target - claimed)
            claimed = target
            rss = usage(endpoint)["rss"]
            probe = load("latency", endpoint, "--requests", str(probes))
            claimed += probes
            points.append({"claims_in_flight": target, **probe, "rss_mb": rss / 2**20})
            per_claim = (rss - baseline) / target if target else None
            points[-1]["bytes_per_claim"] = per_claim
    return {"points": points}


def memory(kind: str, completed: int, checkpoints: int) -> dict[str, Any]:
    series: list[dict[str, Any]] = []
    with server_process(kind) as endpoint:
        series.append({"completed": 0, "rss_mb": usage(endpoint)["rss"] / 2**20})
        chunk = completed // checkpoints
        for i in range(1, checkpoints + 1):
            control(endpoint, "complete", n=chunk)
            series.append({"completed": i * chunk, "rss_mb": usage(endpoint)["rss"] / 2**20})
    return {"series": series}


def idle_workers(kind: str, fleet: int, idle: float, parked: int, seconds: float) -> dict[str, Any]:
    """Idle workers polling as ``kind``'s client does, on one server.

    A fleet of ``fleet`` idle for ``idle`` s, then a batch of as many tasks queued at
    once: the latency to each claim and the requests per idle worker-minute. Then
    ``parked`` idle workers: the server's CPU per second over ``seconds``.
    """
    with server_process(kind) as endpoint:
        batch = load(
            "fleet", endpoint, "--client", kind, "--workers", str(fleet), "--idle", str(idle), "--tasks", str(fleet)
        )
        cpu = load("parked", endpoint, "--client", kind, "--workers", str(parked), "--seconds", str(seconds))
    return {"fleet": batch, "idle_cpu": cpu}


def ratio(patched: float, upstream: float) -> str:
    return f"{patched / upstream:.2f}x" if upstream else "n/a"


def spread(values: list[float], fmt: str, suffix: str = "") -> str:
    """``median (min to max)`` of ``values``, each as ``fmt``; just the value when there is one."""
    median = format(statistics.median(values), fmt) + suffix
    if len(values) < 2:
        return median
    return f"{median} ({format(min(values), fmt)}{suffix} to {format(max(values), fmt)}{suffix})"


def throughput_rows(t_up: dict[str, Any], t_pa: dict[str, Any]) -> list[str]:
    """The throughput rows: each figure's median and range over the rounds, and the ratio's, round by round."""
    rows: list[str] = []
    for key, label in (
        ("cycles_per_second", "claim+submit cycles/s"),
        ("server_cpu_us_per_cycle", "server CPU per cycle (us)"),
    ):
        ups = [r[key] for r in t_up["rounds"]]
        pas = [r[key] for r in t_pa["rounds"]]
        ratios = [p / u for p, u in zip(pas, ups, strict=True) if u]
        shown = spread(ratios, ".2f", "x") if ratios else "n/a"
        rows.append(f"| {label} | {spread(ups, '.0f')} | {spread(pas, '.0f')} | {shown} |")
    return rows


def markdown(results: dict[str, Any]) -> str:
    up, pa = results["upstream"], results["patched"]
    load = results.get("load_average")
    took = results.get("seconds_taken")
    lines = [
        f"Machine: {results['machine']}; {results['loops']} claim+submit loops; throughput: median (min to max) of "
        f"{results['rounds']} rounds of {results['seconds']} s per server, taken in turns, and the ratio's, round "
        "by round"
        + (f"; load average {min(load):.1f} to {max(load):.1f}" if load else "")
        + (f"; took {took / 60:.1f} min" if took else "")
        + ".",
        "",
        "| measure | upstream | lightning_attempts | ratio |",
        "| --- | --- | --- | --- |",
    ]
    t_up, t_pa = up["throughput"], pa["throughput"]
    lines += throughput_rows(t_up, t_pa)
    for p_up, p_pa in zip(up["latency"]["points"], pa["latency"]["points"], strict=True):
        n = p_up["claims_in_flight"]
        for q in ("p50", "p99"):
            lines.append(
                f"| /task {q} (ms), {n:,} claims in flight | {p_up[f'{q}_ms']:.2f} | {p_pa[f'{q}_ms']:.2f} "
                f"| {ratio(p_pa[f'{q}_ms'], p_up[f'{q}_ms'])} |"
            )
    idle_up, idle_pa = up["latency"]["points"][0]["p50_ms"], pa["latency"]["points"][0]["p50_ms"]
    for p_up, p_pa in zip(up["latency"]["points"][1:], pa["latency"]["points"][1:], strict=True):
        lines.append(
            f"| /task p50 vs idle, {p_up['claims_in_flight']:,} in flight | {p_up['p50_ms'] / idle_up:.2f}x "
            f"| {p_pa['p50_ms'] / idle_pa:.2f}x | |"
        )
    last_up, last_pa = up["latency"]["points"][-1], pa["latency"]["points"][-1]
    lines.append(
        f"| memory per claim in flight (bytes) | {last_up['bytes_per_claim']:.0f} | {last_pa['bytes_per_claim']:.0f} "
        f"| {ratio(last_pa['bytes_per_claim'], last_up['bytes_per_claim'])} |"
    )
    for s_up, s_pa in zip(up["memory"]["series"][1:], pa["memory"]["series"][1:], strict=True):
        lines.append(
            f"| RSS after {s_up['completed']:,} completed tasks (MB) | {s_up['rss_mb']:.0f} | {s_pa['rss_mb']:.0f} "
            f"| {ratio(s_pa['rss_mb'], s_up['rss_mb'])} |"
        )
    if "fleet" in up and "fleet" in pa:
        f_up, f_pa = up["fleet"], pa["fleet"]
        batch = f"batch of {f_up['tasks']} to an idle fleet of {f_up['workers']}"
        for q in ("p50", "p99", "max"):
            lines.append(
                f"| {batch}: queue_task to claim, {q} (ms) | {f_up[f'{q}_ms']:.1f} | {f_pa[f'{q}_ms']:.1f} "
                f"| {ratio(f_pa[f'{q}_ms'], f_up[f'{q}_ms'])} |"
            )
        lines.append(
            f"| requests per idle worker-minute | {f_up['requests_per_idle_worker_minute']:.1f} "
            f"| {f_pa['requests_per_idle_worker_minute']:.1f} "
            f"| {ratio(f_pa['requests_per_idle_worker_minute'], f_up['requests_per_idle_worker_minute'])} |"
        )
    if "idle_cpu" in up and "idle_cpu" in pa:
        c_up, c_pa = up["idle_cpu"], pa["idle_cpu"]
        lines.append(
            f"| server CPU with {c_up['workers']:,} idle workers (ms per s; requests/s) "
            f"| {c_up['server_cpu_ms_per_s']:.1f}; {c_up['requests_per_s']:.0f} "
            f"| {c_pa['server_cpu_ms_per_s']:.1f}; {c_pa['requests_per_s']:.0f} | |"
        )
    for name, label in VARIANTS.items():
        if name in results:
            variant = results[name]
            lines.append(
                f"| lightning_attempts {label}: CPU per cycle (us), cycles/s | | "
                f"{variant['server_cpu_us_per_cycle']:.0f}, {variant['cycles_per_second']:.0f} "
                f"| {ratio(variant['server_cpu_us_per_cycle'], t_pa['server_cpu_us_per_cycle'])} of default |"
            )
    return "\n".join(lines)


def plot(results: dict[str, Any], output: Path) -> Path | None:
    try:  # optional: pip install matplotlib
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return None
    figure, axes = plt.subplots(figsize=(6, 4))
    for kind in KINDS:
        points = results[kind]["latency"]["points"]
        axes.plot([p["claims_in_flight"] for p in points], [p["p50_ms"] for p in points], marker="o", label=kind)
    axes.set(xlabel="claims in flight", ylabel="/task p50 (ms)", title="/task latency against claims in flight")
    axes.legend()
    path = output / "latency.png"
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that it works")
    parser.add_argument("--loops", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one throughput round")
    parser.add_argument("--rounds", type=int, default=5, help="throughput rounds per server, taken in turns")
    parser.add_argument("--completed", type=int, default=1_000_000)
    parser.add_argument("--compare-loops", action="store_true", help="also run ours on uvloop, and with h11")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where results.{json,md} go")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds the idle fleet idles before its batch")
    parser.add_argument("--parked", type=int, default=1000, help="idle workers while measuring the server's CPU")
    options = parser.parse_args()
    in_flight = [0, 2_000, 20_000, 100_000]
    probes, checkpoints = 300, 5
    fleet_size, idle_seconds = 32, 10.0
    if options.quick:
        options.loops, options.seconds, options.rounds, options.completed = 4, 1.0, 2, 2_000
        in_flight, probes, checkpoints = [0, 200], 20, 2
        fleet_size, options.idle, options.parked, idle_seconds = 4, 5.5, 20, 1.0  # every worker has polled
    output: Path = options.output
    output.mkdir(parents=True, exist_ok=True)
    started, loads = time.monotonic(), [os.getloadavg()[0]]
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"agentlightning {importlib.metadata.version('agentlightning')}",
        "loops": options.loops,
        "seconds": options.seconds,
        "rounds": options.rounds,
    }
    servers = {kind: (kind, "asyncio", "auto") for kind in KINDS}
    if options.compare_loops:
        servers["patched_uvloop"] = ("patched", "uvloop", "auto")
        servers["patched_h11"] = ("patched", "asyncio", "h11")
    print(f"throughput: {options.rounds} rounds of {options.seconds} s each...", file=sys.stderr, flush=True)
    cycles = throughput(servers, options.loops, options.seconds, options.rounds)
    for kind in KINDS:
        results[kind] = {"throughput": cycles[kind]}
        print(f"{kind}: latency with claims in flight...", file=sys.stderr, flush=True)
        results[kind]["latency"] = latency(kind, in_flight, probes)
        print(f"{kind}: memory over {options.completed:,} completed tasks...", file=sys.stderr, flush=True)
        results[kind]["memory"] = memory(kind, options.completed, checkpoints)
        print(f"{kind}: idle workers (a batch to {fleet_size}, CPU with {options.parked:,})...", file=sys.stderr)
        results[kind].update(idle_workers(kind, fleet_size, options.idle, options.parked, idle_seconds))
        loads.append(os.getloadavg()[0])
    for name in VARIANTS:
        if name in cycles:
            results[name] = cycles[name]
    results["load_average"] = loads  # 1-minute, at the start and after each server's part
    results["seconds_taken"] = time.monotonic() - started
    (output / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (output / "results.md").write_text(table + "\n")
    image = plot(results, output)
    print(table)
    if image is not None:
        print(f"\nplot: {image}")


if __name__ == "__main__":
    main()
