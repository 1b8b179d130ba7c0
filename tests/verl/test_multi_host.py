"""Workers on another host reach the real daemon's server over the network, and its LLM proxy by the served endpoint.

The second host is a network namespace joined by a veth pair (``second_host.py``, root). The
daemon job (``llm_job.py``) runs here: verl's daemon, its server and LLM proxy (upstream's Flask
one, or ours under the switch) on ``0.0.0.0``, and a stand-in LLM on this host's loopback behind it. The workers,
agentlightning's runner with ``LlmAgent``, run in the namespace and reach the server at this
host's address on the pair, as the migration guide's multi-node recipe says (the switch and
``AGL_KEY`` on both sides). Upstream serves ``main_llm`` as ``http://127.0.0.1:<proxy>/v1``:
the worker's own loopback, so every call fails. With the switch the endpoint is served as the
address the worker used, naming the worker's attempt, and every rollout reaches the LLM.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

import pytest

from .parts import ATTEMPT_ID, FRESH, LLM_ANSWER, STALE, Signals, free_port, wait_until
from .processes import environment, fleet
from .second_host import second_host

TASKS = 4
WORKERS = 2


def run_across_hosts(tmp_path: Path, switch: bool) -> tuple[dict[str, Any], dict[str, dict[str, Any]], str]:
    """The llm job here, the workers on the second host; its report, each rollout's LLM call, its output."""
    port = free_port()
    key = {"AGL_KEY": secrets.token_urlsafe(24)} if switch else {}
    with second_host() as host, fleet(tmp_path) as started:
        job = started.start(
            "llm-job", "tests.verl.llm_job", [str(port), str(tmp_path), str(TASKS)], environment(switch, **key)
        )
        for worker in range(WORKERS):
            arguments = [f"http://{host.here}:{port}", str(tmp_path), str(worker), "llm"]
            env = environment(switch, NO_PROXY="*", **key)
            started.start(f"worker-{worker}", "tests.verl.worker", arguments, env, prefix=tuple(host.command()))
        wait_until(lambda: job.poll() is not None, "the llm job", timeout=240)
        output = started.output("llm-job")
        assert job.returncode == 0, output[-4000:] + "".join(
            started.output(f"worker-{w}")[-2000:] for w in range(WORKERS)
        )
    report = json.loads((tmp_path / "llm.json").read_text())
    signals = Signals(tmp_path)
    calls = {rid: json.loads(signals.get(f"llm-{rid}") or "{}") for rid in report["record"]["queued"]}
    return report, calls, output


@pytest.mark.timeout(300)
def test_upstream_hands_a_worker_on_another_host_its_own_loopback(tmp_path: Path) -> None:
    report, calls, output = run_across_hosts(tmp_path, switch=False)
    assert "AttemptAware" not in output
    stored = report["stored_endpoint"]
    assert stored.startswith("http://127.0.0.1:"), stored
    assert all(call["endpoint"] == stored and "error" in call for call in calls.values()), calls  # every call fails
    assert report["answered"] == 0
    assert {c["answer"] for c in report["record"]["completed"].values()} == {STALE}


@pytest.mark.timeout(300)
def test_with_the_switch_every_rollout_on_another_host_reaches_the_llm(tmp_path: Path) -> None:
    report, calls, output = run_across_hosts(tmp_path, switch=True)
    assert "daemon class lightning_attempts.verl.daemon.AttemptAwareDaemon" in output
    record, stored = report["record"], report["stored_endpoint"]
    assert stored.startswith("http://127.0.0.1:"), stored  # what the server stores is unchanged
    proxy_port = stored.removeprefix("http://127.0.0.1:").split("/")[0]
    host_address = calls[record["queued"][0]]["endpoint"].split("//")[1].split(":")[0]
    assert host_address.startswith("10.231.") and host_address.endswith(".1"), calls
    for rid, call in calls.items():  # served as the address the worker reached the server by, the proxy's port,
        # and the path naming the worker's attempt (the key is not needed there)
        endpoint = rf"http://{re.escape(host_address)}:{proxy_port}/rollout/{rid}/attempt/{ATTEMPT_ID}/v1"
        assert re.fullmatch(endpoint, call["endpoint"]) and call["answer"] == LLM_ANSWER, calls
    assert report["answered"] >= TASKS
    assert sorted(record["completed"]) == sorted(record["queued"]) and record["outcome"] == "ok", record
    assert {c["answer"] for c in record["completed"].values()} == {FRESH}
    assert record["metrics"]["attempts/claims"] >= TASKS
