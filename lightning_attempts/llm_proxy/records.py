"""What the proxy keeps of each live attempt's calls: their token ids, bounded in memory.

Each attempt keeps at most ``max_calls_per_attempt`` records (later calls are counted, not
kept, and the attempt is marked truncated). All attempts together keep at most
``max_tokens`` token ids (each call also counts ``CALL_COST`` for its own overhead, and its
path's length in four-byte units, as long as a token id: a caller chooses the path) and
``max_attempts`` attempts: past either, the attempts recorded first are evicted whole, and
counted. An attempt's records stay until ``discard`` or ``clear`` (or eviction): the daemon
reads the stored attempt's after its result arrived, when it is no longer live.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from .targets import Attempt
from .tokens import Tokens

MAX_CALLS_PER_ATTEMPT = 1024
MAX_TOKENS = 32 * 2**20
"""About 128 MiB of token ids (4 bytes each)."""
MAX_ATTEMPTS = 65536
CALL_COST = 64
"""What one record counts against ``max_tokens`` besides its ids."""


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One forwarded call of an attempt, as the backend answered it."""

    method: str
    path: str
    """The backend path, e.g. ``/v1/chat/completions`` (without the query)."""
    status: int
    streamed: bool
    backend: str
    prompt_token_ids: Sequence[int] | None
    """agentlightning's ``prompt_token_ids`` (an ``array('i')``; ``list(...)`` for a list), None if absent."""
    response_token_ids: tuple[Sequence[int], ...] | None
    """The response's ids per choice (agentlightning's ``response_token_ids`` shape), None if absent."""
    seconds: float = 0.0
    """The call's whole time in the proxy, from its request's arrival to its answer's last byte."""

    @property
    def size(self) -> int:
        """Token ids held."""
        prompt = len(self.prompt_token_ids) if self.prompt_token_ids is not None else 0
        return prompt + sum(len(ids) for ids in self.response_token_ids or ())

    @property
    def cost(self) -> int:
        """What the record counts against ``max_tokens``: its ids, ``CALL_COST``, and its path (4 bytes a unit)."""
        return self.size + CALL_COST + (len(self.path) + 3) // 4

    @classmethod
    def of(
        cls, method: str, path: str, status: int, streamed: bool, backend: str, tokens: Tokens, seconds: float = 0.0
    ) -> CallRecord:
        return cls(method, path, status, streamed, backend, tokens.prompt, tokens.response_list(), seconds)


@dataclass(slots=True)
class _AttemptCalls:
    calls: list[CallRecord] = field(default_factory=list[CallRecord])
    cost: int = 0
    truncated: bool = False


class CallRecords:
    """The recorded calls of each attempt, oldest attempts evicted first."""

    def __init__(
        self,
        *,
        max_calls_per_attempt: int = MAX_CALLS_PER_ATTEMPT,
        max_tokens: int = MAX_TOKENS,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        if min(max_calls_per_attempt, max_tokens, max_attempts) < 1:
            raise ValueError("the call record limits must be at least 1")
        self.max_calls_per_attempt = max_calls_per_attempt
        self.max_tokens = max_tokens
        self.max_attempts = max_attempts
        self._attempts: OrderedDict[Attempt, _AttemptCalls] = OrderedDict()
        self._cost = 0
        self._calls = 0
        self.evicted_attempts = 0
        self.calls_not_recorded = 0
        """Calls over an attempt's cap, or larger than ``max_tokens`` alone."""

    def add(self, attempt: Attempt, record: CallRecord) -> None:
        """Keep ``record`` as ``attempt``'s next call, within the limits."""
        cost = record.cost
        calls = self._attempts.get(attempt)
        if cost > self.max_tokens or (calls is not None and len(calls.calls) >= self.max_calls_per_attempt):
            self.calls_not_recorded += 1
            if calls is not None:
                calls.truncated = True
            return
        if calls is None:
            calls = self._attempts[attempt] = _AttemptCalls()
        calls.calls.append(record)
        calls.cost += cost
        self._cost += cost
        self._calls += 1
        while self._cost > self.max_tokens or len(self._attempts) > self.max_attempts:
            _, evicted = self._attempts.popitem(last=False)  # possibly this very attempt, if it is the oldest
            self._cost -= evicted.cost
            self._calls -= len(evicted.calls)
            self.evicted_attempts += 1

    def calls_of(self, rollout_id: str, attempt_id: str) -> list[CallRecord]:
        """The recorded calls of an attempt, in the order they ended ([] if none or evicted)."""
        calls = self._attempts.get(Attempt(rollout_id, attempt_id))
        return list(calls.calls) if calls is not None else []

    def truncated(self, rollout_id: str, attempt_id: str) -> bool:
        """Whether some calls of the attempt were not recorded (over its cap)."""
        calls = self._attempts.get(Attempt(rollout_id, attempt_id))
        return calls is not None and calls.truncated

    def discard(self, rollout_id: str, attempt_id: str) -> None:
        """Forget an attempt's calls."""
        calls = self._attempts.pop(Attempt(rollout_id, attempt_id), None)
        if calls is not None:
            self._cost -= calls.cost
            self._calls -= len(calls.calls)

    def clear(self) -> None:
        """Forget every attempt's calls."""
        self._attempts.clear()
        self._cost = 0
        self._calls = 0

    def stats(self) -> dict[str, int]:
        return {
            "recorded_attempts": len(self._attempts),
            "recorded_calls": self._calls,
            "recorded_cost": self._cost,
            "evicted_attempts": self.evicted_attempts,
            "calls_not_recorded": self.calls_not_recorded,
        }
