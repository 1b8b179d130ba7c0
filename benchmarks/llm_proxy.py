"""The LLM proxy's added latency and throughput: ours against the backend called directly and upstream's Flask proxy.

    python -m benchmarks.llm_proxy [--seconds 5] [--rounds 3] [--delay-ms 100] [--concurrency 1,64,256]
    python -m benchmarks.llm_proxy --quick                     # short runs, to check it works
    python -m benchmarks.llm_proxy --upstream-python .venvs/verl-0-3-0/bin/python   # where verl is
    python -m benchmarks.llm_proxy --tokenizing-only          # the tokenizing rows alone (needs transformers)

A stand-in OpenAI-compatible backend (``--delay-ms`` per call; streamed, spread over its
chunks), each proxy and the aiohttp load generator run in processes of their own, in the
same run: the backend directly, ours on ``/v1`` and on attempt-scoped URLs (token ids
recorded), and upstream's (``AgentModeDaemon._start_proxy_server_v0``, its own code: it
needs verl and flask in ``--upstream-python``'s environment, else its column is skipped and
the reason said), and ours tokenizing every call (``llm_proxy.context``: a model context of
``TOKENIZING_CONTEXT`` tokens, which each call could reach; a byte-level BPE tokenizer with a ChatML
template; it needs transformers, else its column is skipped; the time each call spent in the
tokenizing thread is given too). For 1, 64 and 256 concurrent calls, streamed and not: p50 and p99 of each,
the added latency (a proxy's quantile less the direct one), calls per second and each
proxy's CPU per call; then the throughput at 64 concurrent against a backend that answers
at once. Then the memory held by key-less callers: N connections at once, each sending a
large body (ours: to a made-up attempt, with no key; upstream's: to ``/v1``, which needs
none), and how much each proxy's RSS grew at its peak while they sent. Then the faults:
four backends, one of them hung (a socket whose kernel accepts connections nobody reads),
blackholed (its accept queue full: SYNs dropped) or failing fast
(503 at once), a fresh proxy each, 16 concurrent whole calls for 4x ``--seconds`` with no
warm-up (the proxy meets the fault cold), each call bounded by 60 s: the share answered 200
and p50 / p99 / the slowest of every call (a failed one at the time it failed). Writes
``benchmarks/results/llm_proxy.{json,md}`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Generator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before agentlightning is imported

import httpx
import psutil

from benchmarks.__main__ import RESULTS, background, free_port
from benchmarks.llm_proxy_roles import BENCH_ATTEMPT_ID, CHUNKS
from lightning_attempts.llm_proxy import latency_between

ROOT = Path(__file__).parent.parent
TARGETS = {
    "direct": "backend directly",
    "ours": "ours, /v1",
    "ours_attempt": "ours, attempt-scoped",
    "ours_tokenizing": "ours, attempt-scoped, tokenizing each call",
    "upstream": "upstream's Flask proxy",
}
ATTEMPT_PATH = f"/rollout/rollout-bench/attempt/{BENCH_ATTEMPT_ID}"
HELD = [(6, 60 * 2**20), (100, 4 * 2**20)]
"""Key-less callers at once and the body each sends: the issue's six of 60 MiB, and a hundred."""
QUICK_HELD = [(20, 2**20)]
FAULTS = {
    "hung": "hung (accepts, never answers)",
    "blackholed": "blackholed (SYNs dropped)",
    "failing": "failing fast (503 at once)",
}
FAULT_CONCURRENCY = 16
TOKENIZING_CONTEXT = 2048
"""The model context ``ours_tokenizing`` knows: a call's body plus the template's margin could reach it, so each call
is tokenized (about 210 tokens, far below it: none is capped)."""


class Skipped(RuntimeError):
    """A process could not run here (upstream's proxy without verl or flask)."""


@contextmanager
def role(python: str, name: str, port: int, *args: str) -> Generator[psutil.Process]:
    """Run ``benchmarks.llm_proxy_roles NAME PORT ...`` until it answers on ``/v1/models``; end it afterwards."""
    command = [python, "-m", "benchmarks.llm_proxy_roles", name, str(port), *args]

    def ready() -> None:
        httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5)

    def failed(said: str) -> Exception:
        return Skipped(f"{name} did not start: {said.strip()}")

    with background(command, ready, failed, seconds=180, lines=5) as process:
        yield psutil.Process(process.pid)


def load(url: str, concurrency: int, seconds: float, stream: bool, delay_ms: float, *extra: str) -> dict[str, Any]:
    arguments = ["--concurrency", str(concurrency), "--seconds", str(seconds), "--delay-ms", str(delay_ms), *extra]
    command = [sys.executable, "-m", "benchmarks.llm_proxy_roles", "load", url, *arguments]
    done = subprocess.run(command + (["--stream"] if stream else []), cwd=ROOT, capture_output=True, text=True)
    done.check_returncode()
    return json.loads(done.stdout)


def measure(
    urls: dict[str, str],
    processes: dict[str, psutil.Process],
    seconds: float,
    rounds: int,
    loads: list[tuple[bool, int]],
    delay_ms: float,
) -> list[dict[str, Any]]:
    """Each target under each load (streamed?, concurrency), taking turns, ``rounds`` times; the median of each figure.

    Taking turns spreads a shared machine's drift over every target alike.
    """
    runs: dict[tuple[bool, int, str], list[dict[str, Any]]] = {}
    for _ in range(rounds):
        for stream, concurrency in loads:
            for target, url in urls.items():
                process = processes[target]
                before, stats_before = sum(process.cpu_times()[:2]), proxy_stats(target, url)
                result = load(url, concurrency, seconds, stream, delay_ms)
                cpu = sum(process.cpu_times()[:2]) - before
                result["cpu_us_per_call"] = cpu / max(result["calls"], 1) * 1e6  # warm-up calls included
                if stats_before is not None:  # ours: what the proxy measured of itself (warm-up included)
                    stats_after = proxy_stats(target, url) or {}
                    within = latency_between(stats_before, stats_after)
                    result.update(in_proxy_p50_ms=within["p50_ms"], in_proxy_p99_ms=within["p99_ms"])
                    result.update(tokenizing(stats_before, stats_after))
                runs.setdefault((stream, concurrency, target), []).append(result)
                print(f"{'streamed' if stream else 'whole'} x{concurrency} {target}: {result}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    for stream, concurrency in loads:
        row: dict[str, Any] = {"stream": stream, "concurrency": concurrency, "delay_ms": delay_ms}
        for target in urls:
            results = runs[(stream, concurrency, target)]
            keys = [key for key in results[0] if all(key in result for result in results)]
            row[target] = {key: statistics.median(result[key] for result in results) for key in keys}
            row[target]["rounds"] = results
        rows.append(row)
    return rows


async def _send_large(port: int, path: str, size: int) -> int:
    """One key-less caller: ``size`` bytes of body to ``path``; the answer's status (0: its connection was cut)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    chunk = b" " * 2**18
    try:
        writer.write(head.encode())
        for offset in range(0, size, len(chunk)):
            writer.write(chunk[: size - offset])
            await writer.drain()
        first = await asyncio.wait_for(reader.readline(), 120)
        return int(first.split()[1]) if len(first.split()) > 1 else 0
    except (OSError, asyncio.TimeoutError):  # the proxy closed the connection: what ours does after its 409
        return 0
    finally:
        writer.close()


def held_by_key_less(process: psutil.Process, port: int, paths: list[str], size: int) -> dict[str, Any]:
    """``len(paths)`` callers at once, each sending ``size`` bytes: the process's RSS growth at its peak (MB)."""
    baseline = process.memory_info().rss
    peak = baseline
    sending = True

    def sample() -> None:
        nonlocal peak
        while sending:
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()

    async def callers() -> list[int]:
        return list(await asyncio.gather(*(_send_large(port, path, size) for path in paths)))

    try:
        statuses = asyncio.run(callers())
    finally:
        sending = False
        sampler.join()
    return {
        "callers": len(paths),
        "body_mib": size / 2**20,
        "rss_growth_mb": (peak - baseline) / 2**20,
        "seconds": time.perf_counter() - started,
        "statuses": {str(status): statuses.count(status) for status in sorted(set(statuses))},
    }


def memory_rows(ports: dict[str, int], processes: dict[str, psutil.Process], held: list[tuple[int, int]]) -> list[Any]:
    """``held_by_key_less`` for ours (made-up attempts) and upstream's (``/v1``), for each (callers, body size)."""
    rows: list[dict[str, Any]] = []
    for callers, size in held:
        row: dict[str, Any] = {"callers": callers, "body_mib": size / 2**20}
        for target, port in ports.items():
            paths = [
                f"/rollout/rollout-{n}/attempt/made-up-{n}/v1/chat/completions"
                if target == "ours_attempt"
                else "/v1/chat/completions"
                for n in range(callers)
            ]
            row[target] = held_by_key_less(processes[target], port, paths, size)
            print(f"key-less x{callers} of {size / 2**20:g} MiB {target}: {row[target]}", file=sys.stderr)
        rows.append(row)
    return rows


def proxy_stats(target: str, url: str) -> dict[str, Any] | None:
    """Our proxy's ``stats()``, from its process's ``/bench/stats``; None for the other targets."""
    if not target.startswith("ours"):
        return None
    origin = "/".join(url.split("/", 3)[:3])  # http://127.0.0.1:port
    return httpx.get(f"{origin}/bench/stats", timeout=30).json()


def tokenizing(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """The calls our proxy tokenized between two ``stats()``, and the mean time each spent in its tokenizing thread."""
    count = after.get("context_tokenized", 0) - before.get("context_tokenized", 0)
    if not count:
        return {}
    seconds = after["context_tokenize_seconds"] - before["context_tokenize_seconds"]
    return {"tokenized": count, "tokenize_ms_per_call": seconds / count * 1000}


def tokenizing_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """Tokenizing's cost per call: the time in the tokenizing thread, and the added p50 against ours without it and
    upstream's (their ratio, same run)."""
    lines = [
        "",
        "Tokenizing each call (`ours_tokenizing`): time per call in the tokenizing thread, added p50 (ms).",
        "",
        "| answer | concurrent | tokenizing (ms/call) | added p50: tokenizing / not / upstream | "
        "tokenizing's added p50 / upstream's |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        mine, plain, upstream, direct = (row.get(t) for t in ("ours_tokenizing", "ours_attempt", "upstream", "direct"))
        if mine is None or "tokenize_ms_per_call" not in mine or direct is None:
            continue
        pairs = (("mine", mine), ("plain", plain), ("up", upstream))
        add = {name: r["p50_ms"] - direct["p50_ms"] for name, r in pairs if r is not None and "p50_ms" in r}
        ratio = f"{add['mine'] / add['up']:.2f}" if add.get("up") else "n/a"
        label = "streamed" if row["stream"] else "whole"
        added_cells = " / ".join(f"{add[k]:+.2f}" if k in add else "skipped" for k in ("mine", "plain", "up"))
        lines.append(
            f"| {label} | {row['concurrency']} | {mine['tokenize_ms_per_call']:.2f} | {added_cells} | {ratio} |"
        )
    return lines


def added(row: dict[str, Any], target: str, quantile: str) -> str:
    result, direct = row.get(target), row["direct"]
    if result is None:
        return "skipped"
    if quantile not in result or result["failed"] > result["calls"]:
        return f"fails ({result['failed']} of {result['failed'] + result['calls']})"
    return f"{result[quantile] - direct[quantile]:+.2f}"


def in_proxy(result: dict[str, Any]) -> str:
    """What our proxy measured of itself, in brackets."""
    if result.get("in_proxy_p50_ms") is None:
        return ""
    return f" [in proxy {result['in_proxy_p50_ms']:.2f} / {result['in_proxy_p99_ms']:.2f}]"


@contextmanager
def faulty_backend(fault: str) -> Generator[str]:
    """The ``host:port`` of a backend with ``fault`` while the block runs."""
    if fault == "failing":
        port = free_port()
        with role(sys.executable, "backend", port, "--fail-status", "503"):
            yield f"127.0.0.1:{port}"
        return
    with ExitStack() as sockets:
        listener = sockets.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        listener.listen(4096 if fault == "hung" else 0)  # hung: the kernel accepts, nobody reads
        if fault == "blackholed":
            for _ in range(2):  # the first fills the accept queue; from then on SYNs are dropped
                filler = sockets.enter_context(socket.socket())
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
        yield f"127.0.0.1:{port}"


def faults(healthy: list[str], options: argparse.Namespace, skipped: list[str]) -> list[dict[str, Any]]:
    """Each fault on one backend of four: ours (and upstream's) fresh for it, under one load."""
    seconds = 3.0 if options.quick else options.seconds * 4
    call_timeout = 10.0 if options.quick else 60.0
    ours_options = ["--connect-timeout", "0.5"] if options.quick else []  # probes after 1 s, not 10 s
    rows: list[dict[str, Any]] = []
    for fault in FAULTS:
        row: dict[str, Any] = {"fault": fault, "seconds": seconds, "call_timeout_s": call_timeout}
        with ExitStack() as stack:
            backends = [stack.enter_context(faulty_backend(fault)), *healthy]
            arguments = [argument for backend in backends for argument in ("--backend", backend)]
            ours_port = free_port()
            stack.enter_context(role(sys.executable, "ours", ours_port, *arguments, *ours_options))
            urls = {"ours": f"http://127.0.0.1:{ours_port}/v1/chat/completions"}
            if not skipped:
                upstream_port = free_port()
                try:
                    stack.enter_context(role(options.upstream_python, "upstream", upstream_port, *arguments))
                    urls["upstream"] = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
                except Skipped as reason:
                    skipped.append(str(reason))
            for target, url in urls.items():
                extra = ("--warmup", "0", "--call-timeout", str(call_timeout))
                row[target] = load(url, FAULT_CONCURRENCY, seconds, False, options.delay_ms, *extra)
                if target == "ours":
                    stats = proxy_stats(target, url) or {}
                    row[target].update({key: stats[key] for key in ("resent", "backend_failures", "backends_open")})
                print(f"fault {fault} {target}: {row[target]}", file=sys.stderr)
        rows.append(row)
    return rows


def fault_cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "skipped"
    total = result["calls"] + result["failed"]
    cell = f"{100 * result['calls'] / max(total, 1):.2f}% of {total}"
    if "all_p50_ms" in result:
        cell += f", {result['all_p50_ms']:.0f} / {result['all_p99_ms']:.0f} / {result.get('all_max_ms', 0):.0f}"
    if "resent" in result:
        cell += f" [{result['resent']} re-sent, {result['backends_open']} open at the end]"
    return cell


def fault_markdown(results: dict[str, Any]) -> list[str]:
    rows = results.get("faults", [])
    if not rows:
        return []
    return [
        "",
        f"Faults: 4 backends ({results['delay_ms']:g} ms per call), one of them faulty; a fresh proxy each, "
        f"{FAULT_CONCURRENCY} concurrent whole calls for {rows[0]['seconds']:g} s with no warm-up, each call bounded "
        f"by {rows[0]['call_timeout_s']:g} s. Answered 200, and p50 / p99 of every call (ms; a failed one at the "
        "time it failed) and the slowest.",
        "",
        "| faulty backend | ours | upstream's Flask proxy |",
        "| --- | --- | --- |",
        *(
            f"| {FAULTS[row['fault']]} | {fault_cell(row.get('ours'))} | {fault_cell(row.get('upstream'))} |"
            for row in rows
        ),
    ]


def markdown(results: dict[str, Any]) -> str:
    present = [t for t in TARGETS if t != "direct" and any(t in row for row in results["latency"])]
    lines = [
        f"Machine: {results['machine']}. Backend: {results['delay_ms']:g} ms per call (streamed: over "
        f"{results['chunks']} chunks); median of {results['rounds']} measurements of {results['seconds']:g} s, "
        "taken in turns. Added = a proxy's quantile less the direct one (ms); in brackets, the p50 / p99 of the "
        "time our proxy measured itself spending on each call (`stats()`: its whole time less its waits on the "
        "backend).",
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
            f"{added(row, t, 'p50_ms')} / {added(row, t, 'p99_ms')}{in_proxy(row[t])}, {row[t]['calls_per_s']:.0f}, "
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
    tokenized = tokenizing_markdown(results["latency"])
    return "\n".join(lines + tokenized + memory_markdown(results.get("memory", [])) + fault_markdown(results))


def memory_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The table of memory held by key-less callers (statuses: how many callers read which answer; 0: cut)."""
    if not rows:
        return []
    present = [t for t in ("ours_attempt", "upstream") if t in rows[0]]
    names = {"ours_attempt": "ours, made-up attempt ids", "upstream": "upstream's Flask proxy, /v1"}
    lines = [
        "",
        "Memory held by key-less callers: each sends its whole body at once; the proxy process's RSS growth at "
        "its peak while they send (MB), and the answers they read.",
        "",
        "| callers x body | " + " | ".join(f"{names[t]}: RSS growth (MB), answers" for t in present) + " |",
        "| --- |" + " --- |" * len(present),
    ]
    for row in rows:
        cells = [
            f"{row[t]['rss_growth_mb']:+.1f}, "
            + ", ".join(f"{status}: {count}" for status, count in row[t]["statuses"].items())
            for t in present
        ]
        lines.append(f"| {row['callers']} x {row['body_mib']:g} MiB | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs: check that it works")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each target and load (median)")
    parser.add_argument("--delay-ms", type=float, default=100.0, help="the backend's time per call")
    parser.add_argument("--concurrency", type=lambda s: [int(n) for n in s.split(",")], default=[1, 64, 256])
    parser.add_argument("--upstream-python", default=sys.executable, help="a Python with verl and flask")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--no-faults", action="store_true", help="leave the fault scenarios out")
    parser.add_argument("--tokenizing-only", action="store_true", help="the latency rows only, with tokenizing")
    options = parser.parse_args()
    held = HELD
    if options.quick:
        options.seconds, options.concurrency, options.rounds = 1.0, [1, 16], 1
        held = QUICK_HELD
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "delay_ms": options.delay_ms,
        "chunks": CHUNKS,
        "seconds": options.seconds,
        "rounds": options.rounds,
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
        if options.tokenizing_only:
            del urls["ours"]
        try:
            port, context = free_port(), str(TOKENIZING_CONTEXT)
            tokenizing_role = role(sys.executable, "ours", port, "--backend", backend, "--context", context)
            processes["ours_tokenizing"] = stack.enter_context(tokenizing_role)
            urls["ours_tokenizing"] = f"http://127.0.0.1:{port}{ATTEMPT_PATH}/v1/chat/completions"
        except Skipped as skipped:
            results["skipped"].append(str(skipped))
        try:
            upstream = role(options.upstream_python, "upstream", upstream_port, "--backend", backend)
            processes["upstream"] = stack.enter_context(upstream)
            urls["upstream"] = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
        except Skipped as skipped:
            results["skipped"].append(str(skipped))
        loads = [(stream, concurrency) for stream in (False, True) for concurrency in options.concurrency]
        results["latency"] = measure(urls, processes, options.seconds, options.rounds, loads, options.delay_ms)
        if options.tokenizing_only:
            options.no_faults, held = True, []
            results["throughput"] = []
        else:
            results["throughput"] = measure(urls, processes, options.seconds, options.rounds, [(False, 64)], 0.0)
        ports = {"ours_attempt": ours_port} | ({"upstream": upstream_port} if "upstream" in processes else {})
        results["memory"] = memory_rows(ports, processes, held)
        if not options.no_faults:
            healthy = [backend]
            for _ in range(2):
                port = free_port()
                stack.enter_context(role(sys.executable, "backend", port))
                healthy.append(f"127.0.0.1:{port}")
            results["faults"] = faults(healthy, options, results["skipped"])
    options.output.mkdir(parents=True, exist_ok=True)
    (options.output / "llm_proxy.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (options.output / "llm_proxy.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
