"""The token ids of each live attempt's calls are kept, bounded; plain and refused calls are never recorded."""

from __future__ import annotations

from array import array

import httpx

from lightning_attempts.llm_proxy import Attempt, CallRecord, CallRecords

from .conftest import CHAT, Attempts, StartProxy, attempt_url
from .stand_in_vllm import StandInVllm, prompt_ids, response_ids


async def test_each_call_of_an_attempt_is_recorded_with_its_token_ids(
    start_proxy: StartProxy, attempts: Attempts, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy()
    attempt, other = attempts.live(), attempts.live()
    turns = [{"model": "m", "messages": [{"role": "user", "content": text}]} for text in ("one", "two, longer")]
    names = [(await http.post(attempt_url(server, attempt), json=turn)).headers["x-backend"] for turn in turns]
    await http.post(attempt_url(server, other), json=CHAT)
    calls = server.proxy.calls_of(*attempt)
    assert [list(call.prompt_token_ids or ()) for call in calls] == [prompt_ids(turn) for turn in turns]
    assert [[list(ids) for ids in call.response_token_ids or ()] for call in calls] == [[response_ids(names[0])]] * 2
    assert [(c.method, c.path, c.status, c.streamed, c.backend) for c in calls] == [
        ("POST", "/v1/chat/completions", 200, False, next(b.address for b in backends if b.name == names[0]))
    ] * 2
    assert len(server.proxy.calls_of(*other)) == 1
    assert server.proxy.calls_of("rollout-1", "nobody") == []


async def test_a_streamed_call_records_the_ids_its_chunks_carry(
    start_proxy: StartProxy, attempts: Attempts, http: httpx.AsyncClient
) -> None:
    server = await start_proxy()
    attempt = attempts.live()
    answer = await http.post(attempt_url(server, attempt), json={**CHAT, "stream": True, "return_token_ids": True})
    declined = {**CHAT, "stream": True, "return_token_ids": False}  # the agent's word stands
    await http.post(attempt_url(server, attempt), json=declined)
    with_ids, without = server.proxy.calls_of(*attempt)
    assert with_ids.streamed and list(with_ids.prompt_token_ids or ()) == prompt_ids(CHAT)
    assert [list(ids) for ids in with_ids.response_token_ids or ()] == [response_ids(answer.headers["x-backend"])]
    assert without.streamed and (without.prompt_token_ids, without.response_token_ids) == (None, None)


async def test_plain_and_refused_calls_are_never_recorded(
    start_proxy: StartProxy, attempts: Attempts, http: httpx.AsyncClient
) -> None:
    server = await start_proxy()
    attempt = attempts.live()
    await http.post(f"{server.endpoint}/v1/chat/completions", json=CHAT)
    await http.post(attempt_url(server, attempt), json=CHAT)
    attempts.end(attempt, "superseded")
    assert (await http.post(attempt_url(server, attempt), json=CHAT)).status_code == 409
    assert len(server.proxy.calls_of(*attempt)) == 1  # what it called while live stays, for the daemon to judge
    assert server.proxy.stats()["recorded_calls"] == 1


async def test_discard_and_clear_forget_recorded_calls(
    start_proxy: StartProxy, attempts: Attempts, http: httpx.AsyncClient
) -> None:
    server = await start_proxy()
    first, second = attempts.live(), attempts.live()
    for attempt in (first, second):
        await http.post(attempt_url(server, attempt), json=CHAT)
    server.proxy.discard(*first)
    assert server.proxy.calls_of(*first) == [] and len(server.proxy.calls_of(*second)) == 1
    server.proxy.clear()
    assert server.proxy.calls_of(*second) == []
    assert server.proxy.stats()["recorded_cost"] == 0


def _record(tokens: int) -> CallRecord:
    return CallRecord("POST", "/v1/chat/completions", 200, False, "a:1", array("i", range(tokens)), None)


def test_each_attempt_keeps_at_most_its_cap_and_says_it_was_truncated() -> None:
    records = CallRecords(max_calls_per_attempt=2)
    for _ in range(3):
        records.add(Attempt("r", "a"), _record(1))
    assert len(records.calls_of("r", "a")) == 2 and records.truncated("r", "a")
    assert records.stats()["calls_not_recorded"] == 1


def test_past_the_total_the_oldest_attempts_are_evicted_and_counted() -> None:
    records = CallRecords(max_tokens=3 * _record(100).cost)
    for name in ("old", "middle", "new"):
        records.add(Attempt("r", name), _record(100))
    records.add(Attempt("r", "newest"), _record(100))
    assert records.calls_of("r", "old") == []
    assert [len(records.calls_of("r", name)) for name in ("middle", "new", "newest")] == [1, 1, 1]
    records.add(Attempt("r", "middle"), _record(100))  # a later call does not make an attempt younger
    assert records.calls_of("r", "middle") == [] and records.stats()["evicted_attempts"] == 2
    assert records.stats()["recorded_cost"] <= records.max_tokens


def test_past_the_most_attempts_the_oldest_is_evicted() -> None:
    records = CallRecords(max_attempts=2)
    for name in ("a", "b", "c"):
        records.add(Attempt("r", name), _record(1))
    assert records.calls_of("r", "a") == [] and records.stats()["recorded_attempts"] == 2


def test_each_record_counts_its_path() -> None:
    """A caller chooses the path: 1,000 calls with 8 KB paths count their 8 MB, not 64 bytes each."""
    records = CallRecords(max_tokens=64 * 2**20 // 4)
    long = CallRecord("POST", "/v1/" + "a" * 8192, 200, False, "a:1", None, None)
    for _ in range(1000):
        records.add(Attempt("r", "a"), long)
    assert records.stats()["recorded_cost"] * 4 >= 1000 * 8192


def test_a_call_larger_than_the_whole_budget_is_not_recorded() -> None:
    records = CallRecords(max_tokens=100)
    records.add(Attempt("r", "a"), _record(1000))
    assert records.calls_of("r", "a") == [] and records.stats()["calls_not_recorded"] == 1


async def test_a_call_the_backend_answered_with_an_error_is_not_recorded(
    start_proxy: StartProxy, attempts: Attempts, http: httpx.AsyncClient
) -> None:
    server = await start_proxy()
    attempt = attempts.live()
    answer = await http.post(attempt_url(server, attempt, "no/" + "a" * 60_000), json=CHAT)
    assert answer.status_code == 404  # the stand-in's own answer, passed through
    assert server.proxy.calls_of(*attempt) == [] and server.proxy.stats()["recorded_cost"] == 0
