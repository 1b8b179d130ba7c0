"""A rollout worker in its own process: the release's own legacy runner, polling the daemon's server.

    python -m tests.verl.worker ENDPOINT SIGNAL_DIR WORKER_ID [batch|llm|work|empty|proxy|stream]

It builds its client as a user's worker script does, ``agentlightning.AgentLightningClient``:
with ``LIGHTNING_ATTEMPTS_INSTALL=1`` in its environment that name is the attempt-aware
shim, without it upstream's. Nothing here calls ``install()``. It runs until it is killed.
``batch`` (default): ``BatchAgent``; ``llm``: ``LlmAgent``, which calls the LLM it is served;
``work``: ``WorkAgent`` (the step-overhead benchmark); ``empty``: ``EmptyAgent``, no triplets;
``proxy``: ``ProxyAgent``, LLM calls through the daemon's proxy and no triplets; ``stream``: ``StreamAgent``
under the release's own tracer (AgentOps) and triplet exporter, a whole then a streamed call with openai's client;
``context``: ``ContextAgent``, a conversation that grows by ``TURN_WORDS`` tokens a turn until the LLM refuses it.
Each task handed to it is noted (``Signals.claimed_at``), and each reply to a post (``Signals.posted``).
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import agentlightning
from agentlightning import LitAgent
from agentlightning.types import Triplet

from lightning_attempts.compat import LegacyRunner
from lightning_attempts.testing import NullTracer

from .parts import (
    DOOMED_SECONDS,
    FRESH,
    LLM_ANSWER,
    OVERTIME,
    POLL_SECONDS,
    SENT_AT,
    STALE,
    TIMEOUT_SECONDS,
    WORK_SECONDS,
    Signals,
    tokenizer,
)


class BatchAgent(LitAgent):  # pyright: ignore[reportMissingTypeArgument]
    """Answers with token-id triplets; the first claim of a slow task straggles past the timeout.

    The straggler answers ``STALE`` with reward 0.0, every other claim ``FRESH`` with 1.0, so
    a stale result is visible in what the daemon trains on. ``late``: the straggler waits for
    its batch to finish. ``early``: it waits for the re-claim, and the re-claim waits for the
    straggler's post to be answered and, if the server accepted it, for the batch to finish.
    ``hold``: every claim waits until the daemon job releases the task. ``doomed``: the first
    claim works until the test kills the worker; a re-claim answers at once.
    """

    def __init__(self, signals: Signals) -> None:
        super().__init__()
        self._signals = signals
        self._tokenizer = tokenizer()
        self._answering = threading.local()

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text))

    def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> list[Triplet]:  # type: ignore[override]
        slow, batch = task.get("slow"), task["batch"]
        answer = FRESH
        if slow == "overtime":  # needs more than the task timeout, every time
            time.sleep(OVERTIME * TIMEOUT_SECONDS)
        elif slow == "doomed":
            if self._signals.claim_first(rollout_id):  # works until the test kills this process
                self._signals.wait(Signals.released(rollout_id), timeout=DOOMED_SECONDS)
        elif slow == "hold":
            self._signals.claim_first(rollout_id)
            self._signals.wait(Signals.released(rollout_id), timeout=120)
        elif slow and self._signals.claim_first(rollout_id):
            answer = STALE
            if slow == "late":
                self._signals.wait(Signals.batch_done(batch))
            else:
                self._signals.wait(Signals.reclaimed(rollout_id))
        elif slow:
            self._signals.set(Signals.reclaimed(rollout_id))
            if slow == "early":
                self._signals.wait(Signals.posted(rollout_id, STALE))
                if self._signals.posted_status(rollout_id, STALE) == "ok":
                    self._signals.wait(Signals.batch_done(batch))
        self._answering.answer = answer
        reward = 1.0 if answer == FRESH else 0.0
        prompt = {"token_ids": self._encode(f"task {task['index']}")}
        return [Triplet(prompt=prompt, response={"token_ids": self._encode(answer)}, reward=reward)]

    def validation_rollout(self, task: Any, rollout_id: str, resources: Any) -> list[Triplet]:  # type: ignore[override]
        return self.training_rollout(task, rollout_id, resources)

    def answered(self, rollout_id: str, reply: dict[str, Any] | None, sent_at: float) -> None:
        """Record the server's reply to this thread's last post (the runner posts from the agent's thread)."""
        answer = getattr(self._answering, "answer", FRESH)
        record = {**(reply or {}), SENT_AT: sent_at}
        self._signals.set(Signals.posted(rollout_id, answer), json.dumps(record))


class LlmAgent(BatchAgent):
    """Calls ``resources["main_llm"].endpoint`` as an OpenAI client would; answers what the LLM said.

    Notes ``llm-<rollout id>``: the endpoint it was served, and the LLM's answer or the error.
    A call that fails answers ``STALE`` (reward 0.0); one that reaches the stand-in, its answer.
    """

    def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> list[Triplet]:  # type: ignore[override]
        llm = resources["main_llm"]
        note: dict[str, Any] = {"endpoint": llm.endpoint}
        body = {"model": llm.model, "messages": [{"role": "user", "content": f"task {task['index']}"}]}
        request = urllib.request.Request(
            llm.endpoint.rstrip("/") + "/chat/completions",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to the endpoint
        try:
            with opener.open(request, timeout=20) as response:
                note["answer"] = json.load(response)["choices"][0]["message"]["content"]
        except (OSError, ValueError, KeyError) as error:
            note["error"] = repr(error)
        self._signals.set(f"llm-{rollout_id}", json.dumps(note))
        answer = FRESH if note.get("answer") == LLM_ANSWER else STALE
        self._answering.answer = answer
        prompt = {"token_ids": self._encode(f"task {task['index']}")}
        reward = 1.0 if answer == FRESH else 0.0
        return [Triplet(prompt=prompt, response={"token_ids": self._encode(answer)}, reward=reward)]


class ProxyAgent(BatchAgent):
    """Calls ``main_llm`` twice per claim, whole then streamed (vLLM 0.10.2+'s ``return_token_ids``), and returns a
    reward without triplets: the daemon must train on the calls its proxy recorded.

    ``straggle``: the first claim makes its first call, waits for the re-claim (its timeout), then tries
    its second call, which the proxy must refuse. Each claim notes ``proxy-<rollout id>-<first|again>``:
    the endpoint it was served and, per call, the status, the error code or the streamed events.
    """

    def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
        llm = resources["main_llm"]
        straggler = task.get("slow") == "straggle" and self._signals.claim_first(rollout_id)
        kind = "first" if straggler or not task.get("slow") else "again"
        note: dict[str, Any] = {"endpoint": llm.endpoint, "calls": []}
        note["calls"].append(call_llm(llm, f"task {task['index']} {kind} one", stream=False))
        if straggler:
            self._signals.wait(Signals.reclaimed(rollout_id))
            self._signals.wait(Signals.posted(rollout_id, FRESH))  # the re-claim's result is stored
        elif task.get("slow"):
            self._signals.set(Signals.reclaimed(rollout_id))
        note["calls"].append(call_llm(llm, f"task {task['index']} {kind} two", stream=True))
        self._signals.set(f"proxy-{rollout_id}-{kind}", json.dumps(note))
        self._answering.answer = STALE if straggler else FRESH
        return 1.0


def call_llm(llm: Any, content: str, *, stream: bool) -> dict[str, Any]:
    """One chat completion at ``llm.endpoint`` (no key: an attempt's endpoint needs none): what came back."""
    body = {"model": llm.model, "messages": [{"role": "user", "content": content}], "stream": stream}
    if stream:
        body["return_token_ids"] = True
    request = urllib.request.Request(
        llm.endpoint.rstrip("/") + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    result: dict[str, Any] = {"content": content, "stream": stream}
    try:
        with opener.open(request, timeout=20) as response:
            text = response.read().decode()
            result["status"] = response.status
            result["events"] = [line for line in text.splitlines() if line.startswith("data:")] if stream else []
    except urllib.error.HTTPError as error:
        result["status"] = error.code
        result["code"] = json.loads(error.read() or b"{}").get("error", {}).get("code")
    except OSError as error:
        result["error"] = repr(error)
    return result


class StreamAgent(BatchAgent):
    """Calls ``main_llm`` with openai's client, whole then streamed (as agents do: without ``return_token_ids``), and
    returns a reward: the runner sends the release's tracer's triplets, the streamed call's with ``token_ids: []``.

    ``straggle``: the first claim makes both calls, then outlives its timeout and returns after the re-claim's result
    is stored (its own is dropped). Each claim notes ``stream-<rollout id>-<first|again>``: the two answers' texts.
    """

    def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
        openai: Any = importlib.import_module("openai")
        llm = resources["main_llm"]
        straggler = task.get("slow") == "straggle" and self._signals.claim_first(rollout_id)
        kind = "first" if straggler or not task.get("slow") else "again"
        client = openai.OpenAI(base_url=llm.endpoint, api_key="none", max_retries=0, timeout=20)
        one = [{"role": "user", "content": f"task {task['index']} {kind} one"}]
        whole = client.chat.completions.create(model=llm.model, messages=one)
        two = [{"role": "user", "content": f"task {task['index']} {kind} two"}]
        chunks = client.chat.completions.create(model=llm.model, messages=two, stream=True)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        note = {"endpoint": llm.endpoint, "whole": whole.choices[0].message.content, "streamed": streamed}
        if straggler:
            self._signals.wait(Signals.reclaimed(rollout_id))
            self._signals.wait(Signals.posted(rollout_id, FRESH))  # the re-claim's result is stored
        elif task.get("slow"):
            self._signals.set(Signals.reclaimed(rollout_id))
        self._signals.set(f"stream-{rollout_id}-{kind}", json.dumps(note))
        self._answering.answer = STALE if straggler else FRESH
        return 1.0


def traced(worker_id: int) -> tuple[Any, Any]:
    """The release's own tracer (AgentOps, which instruments openai's client) and triplet exporter
    (``TripletExporter`` on 0.1.x, ``TracerTraceToTriplet`` from 0.2), set up as its trainer sets them up."""
    tracing: Any = importlib.import_module("agentlightning.tracer")
    tracer = tracing.AgentOpsTracer()
    tracer.init()
    tracer.init_worker(worker_id)
    exporter: Any = getattr(tracing, "TripletExporter", None)
    if exporter is None:  # 0.2+
        exporter = importlib.import_module("agentlightning.adapter.triplet").TracerTraceToTriplet
    return tracer, exporter()


TURN_WORDS = 600
"""Tokens a ``ContextAgent`` adds to its conversation each turn (a tool's output: ``task`` words)."""
TURN_MAX_TOKENS = 1024
MAX_TURNS = 12


class ContextAgent(BatchAgent):
    """Adds ``TURN_WORDS`` tokens a turn to its conversation and calls ``main_llm`` with ``max_tokens=1024``, until
    the LLM refuses the call (400) or ``MAX_TURNS``; rewards 1.0 without triplets. Notes ``context-<rollout id>``:
    per call, its status, error code and the ``max_tokens`` asked."""

    def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
        llm = resources["main_llm"]
        messages: list[dict[str, str]] = []
        calls: list[dict[str, Any]] = []
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for _ in range(MAX_TURNS):
            messages.append({"role": "user", "content": " ".join(["task"] * TURN_WORDS)})
            body = {"model": llm.model, "messages": messages, "max_tokens": TURN_MAX_TOKENS}
            request = urllib.request.Request(
                llm.endpoint.rstrip("/") + "/chat/completions",
                data=json.dumps(body).encode(),
                headers={"content-type": "application/json"},
            )
            try:
                with opener.open(request, timeout=20) as response:
                    answer = json.loads(response.read())
                calls.append({"status": 200})
                messages.append({"role": "assistant", "content": answer["choices"][0]["message"]["content"]})
            except urllib.error.HTTPError as error:
                code = json.loads(error.read() or b"{}").get("error", {}).get("code")
                calls.append({"status": error.code, "code": code})
                break
        self._signals.set(f"context-{rollout_id}", json.dumps(calls))
        return 1.0


class WorkAgent(BatchAgent):
    """Works ``WORK_SECONDS`` on each task (a stand-in for a rollout), then answers ``FRESH``."""

    def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> list[Triplet]:  # type: ignore[override]
        time.sleep(WORK_SECONDS)
        prompt = {"token_ids": self._encode(f"task {task['index']}")}
        return [Triplet(prompt=prompt, response={"token_ids": self._encode(FRESH)}, reward=1.0)]


class EmptyAgent(BatchAgent):
    """Rewards 1.0 and returns no triplets: what the daemon gets when the agent's tracer misses its LLM calls."""

    def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
        return 1.0


AGENTS: dict[str, type[BatchAgent]] = {
    "batch": BatchAgent,
    "llm": LlmAgent,
    "work": WorkAgent,
    "empty": EmptyAgent,
    "proxy": ProxyAgent,
    "stream": StreamAgent,
    "context": ContextAgent,
}


def main(endpoint: str, signal_dir: str, worker_id: int, kind: str = "batch") -> None:
    # ``work`` polls as a user's worker does: upstream's client every poll_interval (5 s by default).
    options = {} if kind == "work" else {"poll_interval": POLL_SECONDS}
    client = agentlightning.AgentLightningClient(endpoint=endpoint, **options)
    signals = Signals(Path(signal_dir))
    agent = AGENTS[kind](signals)
    post, poll = client.post_rollout, client.poll_next_task

    def post_and_record(rollout: Any) -> dict[str, Any] | None:
        sent_at = time.time()
        reply = post(rollout)
        agent.answered(rollout.rollout_id, reply, sent_at)
        return reply

    def poll_and_record() -> Any:
        task = poll()
        if task is not None:
            signals.set(Signals.claimed_at(task.rollout_id, worker_id), str(time.time()))
        return task

    setattr(client, "post_rollout", post_and_record)  # noqa: B010 (an instance attribute over the method)
    setattr(client, "poll_next_task", poll_and_record)  # noqa: B010
    client_class = type(client)
    print(
        f"worker {worker_id} client {client_class.__module__}.{client_class.__qualname__} "
        f"mro={[c.__name__ for c in client_class.__mro__]}"
    )
    pair: tuple[Any, Any] = traced(worker_id) if kind == "stream" else (NullTracer(), None)
    tracer, exporter = pair
    print(f"worker {worker_id} ready", flush=True)
    runner: Any = LegacyRunner(
        agent=agent, client=client, tracer=tracer, triplet_exporter=exporter, worker_id=worker_id
    )
    while True:
        runner.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:5])
