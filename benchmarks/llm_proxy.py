"""The LLM proxy's added latency and throughput: ours against the backend called directly and upstream's Flask proxy.

    python -m benchmarks.llm_proxy [--seconds 5] [--delay-ms 100] [--concurrency 1,64,256]
    python -m benchmarks.llm_proxy --quick                     # short runs, to check it works
    python -m benchmarks.llm_proxy --upstream-python .venvs/verl-0-3-0/bin/python   # where verl is

A stand-in OpenAI-compatible backend (``--delay-ms`` per call; streamed, spread over its
chunks), each proxy and the aiohttp load generator run in processes of their own, in the
same run: the backend directly, ours on ``/v1`` and on attempt-scoped URLs (token ids
recorded), and upstream's (``AgentModeDaemon._start_proxy_server_v0``, its own code: it
needs verl and flask in ``--upstream-python``'s environment, else its column is skipped and
the reason said). For 1, 64 and 256 concurrent calls, streamed and not: p50 and p99 of each,
the added latency (a proxy's quantile less the direct one), calls per second and each
proxy's CPU per call; then the throughput at 64 concurrent against a backend that answers
at once. Writes ``benchmarks/results/llm_proxy.{json,md}`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.__main__ import RESULTS, free_port
from benchmarks.llm_proxy_roles import CHUNKS

ROOT = Path(__file__).parent.parent
TARGETS = {
    "direct": "backend directly",
    "ours": "ours, /v1",
    "ours_attempt": "ours, attempt-scoped",
    "upstream": "upstream's Flask proxy",
}
ATTEMPT_PATH = "/rollout/rollout-bench/attempt/0b7f3a52-1f54-4c55-9c1e-3f0b5c3cf1a2"


class Skipped(RuntimeError):
    """A process could not run here (upstream's proxy without verl or flask)."""


@contextmanager
def role(python: str, name: str, port: int, *args: str) -> Generator[psutil.Process]:
    """Run ``benchmarks.llm_proxy_roles NAME PORT ...`` until it answers on ``/v1/models``; end it afterwards."""
    command = [python, "-m", "benchmarks.llm_proxy_roles", name, str(port), *args]
    environment = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=errors)
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5)
                    break
                except httpx.HTTPError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        errors.seek(0)
                        said = "".join(errors.readlines()[-5:]).strip()
                        raise Skipped(f"{name} did not start: {said}") from None
                    time.sleep(0.2)
            yield psutil.Process(process.pid)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


def load(url: str, concurrency: int, seconds: float, stream: bool, delay_ms: float) -> dict[str, Any]:
    arguments = ["--concurrency", str(concurrency), "--seconds", str(seconds), "--delay-ms", str(delay_ms)]
    command = [sys.executable, "-m", "benchmarks.llm_proxy_roles", "load", url, *arguments]
    done = subprocess.run(command + (["--stream"] if stream else []), cwd=ROOT, capture_output=True, text=True)
    done.check_returncode()
    return json.loads(done.stdout)


def measure(
    urls: dict[str, str],
    processes: dict[str, psutil.Process],
    seconds: float,
    concurrencies: list[int],
    streams: tuple[bool, ...],
    delay_ms: float,
) -> list[dict[str, Any]]:
    """Each target under each load, taking turns (a shared machine's drift falls on all alike)."""
    rows: list[dict[str, Any]] = []
    for stream in streams:
        for concurrency in concurrencies:
            row: dict[str, Any] = {"stream": stream, "concurrency": concurrency, "delay_ms": delay_ms}
            for target, url in urls.items():
                process = processes[target]
                before = sum(process.cpu_times()[:2])
                result = load(url, concurrency, seconds, stream, delay_ms)
                cpu = sum(process.cpu_times()[:2]) - before
                result["cpu_us_per_call"] = cpu / max(result["calls"], 1) * 1e6  # warm-up calls included
                row[target] = result
                print(f"{'streamed' if stream else 'whole'} x{concurrency} {target}: {result}", file=sys.stderr)
            rows.append(row)
    return rows


def added(row: dict[str, Any], target: str, quantile: str) -> str:
    result, direct = row.get(target), row["direct"]
    if result is None:
        return "skipped"
    if quantile not in result or result["failed"] > result["calls"]:
        return f"fails ({result['failed']} of {result['failed'] + result['calls']})"
    return f"{result[quantile] - direct[quantile]:+.2f}"


def markdown(results: dict[str, Any]) -> str:
    present = [t for t in TARGETS if t != "direct" and any(t in row for row in results["latency"])]
    lines = [
        f"Machine: {results['machine']}. Backend: {results['delay_ms']:g} ms per call (streamed: over "
        f"{results['chunks']} chunks); {results['seconds']:g} s per measurement. Added = a proxy's quantile "
        "less the direct one (ms).",
        *(f"Skipped: {reason}" for reason in results["skipped"]),
        "",
        "| answer | concurrent | direct p50 / p99 (ms) | "
        + " | ".join(f"{TARGETS[t]}: added p50 / p99 (ms), calls/s, CPU us/call" for t in present)
        + " |",
        "| --- | --- | --- |" + " --- |" * len(present),
    ]
    for row in results["latency"] + results["throughput"]:
        direct = row["direct"]
        cells = [
            f"{added(row, t, 'p50_ms')} / {added(row, t, 'p99_ms')}, {row[t]['calls_per_s']:.0f}, "
            f"{row[t]['cpu_us_per_call']:.0f}"
            if t in row
            else "skipped"
            for t in present
        ]
        label = ("streamed" if row["stream"] else "whole") + (" (backend at once)" if row["delay_ms"] == 0 else "")
        lines.append(
            f"| {label} | {row['concurrency']} | {direct['p50_ms']:.2f} / {direct['p99_ms']:.2f} "
            f"({direct['calls_per_s']:.0f}/s) | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs: check that it works")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one measurement")
    parser.add_argument("--delay-ms", type=float, default=100.0, help="the backend's time per call")
    parser.add_argument("--concurrency", type=lambda s: [int(n) for n in s.split(",")], default=[1, 64, 256])
    parser.add_argument("--upstream-python", default=sys.executable, help="a Python with verl and flask")
    parser.add_argument("--output", type=Path, default=RESULTS)
    options = parser.parse_args()
    if options.quick:
        options.seconds, options.concurrency = 1.0, [1, 16]
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "delay_ms": options.delay_ms,
        "chunks": CHUNKS,
        "seconds": options.seconds,
        "skipped": [],
    }
    with ExitStack() as stack:
        backend_port = free_port()
        backend = f"127.0.0.1:{backend_port}"
        processes = {"direct": stack.enter_context(role(sys.executable, "backend", backend_port))}
        ours_port, upstream_port = free_port(), free_port()
        processes["ours"] = stack.enter_context(role(sys.executable, "ours", ours_port, "--backend", backend))
        processes["ours_attempt"] = processes["ours"]
        urls = {
            "direct": f"http://{backend}/v1/chat/completions",
            "ours": f"http://127.0.0.1:{ours_port}/v1/chat/completions",
            "ours_attempt": f"http://127.0.0.1:{ours_port}{ATTEMPT_PATH}/v1/chat/completions",
        }
        try:
            upstream = role(options.upstream_python, "upstream", upstream_port, "--backend", backend)
            processes["upstream"] = stack.enter_context(upstream)
            urls["upstream"] = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
        except Skipped as skipped:
            results["skipped"].append(str(skipped))
        results["latency"] = measure(
            urls, processes, options.seconds, options.concurrency, (False, True), options.delay_ms
        )
        results["throughput"] = measure(urls, processes, options.seconds, [64], (False,), 0.0)
    options.output.mkdir(parents=True, exist_ok=True)
    (options.output / "llm_proxy.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (options.output / "llm_proxy.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
