"""Over-long LLM calls handled before any backend: ``max_tokens`` capped to fit, or the call refused as vLLM would.

``ContextGuard`` knows up to three limits, each learnt by whoever starts the proxy (verl's
daemon: ``verl.context_limits``) and None while unknown:

- the model's context (vLLM's ``max_model_len``, from ``GET /v1/models``: ``learn_model_context``);
- the trainer's ``max_prompt_length`` and ``max_response_length`` (``TrainerLimits``), applied only
  while ``training`` (a training step: its rows are what the trainer keeps or drops).

A chat or completions call that could reach a limit has its prompt tokenized (the chat template
with the call's tools and ``add_generation_prompt``, or the prompt), in a thread of the guard's own
so that the event loop, shared with the task server, is not held; one whose body is too small to
reach any limit is not (a token is at least one byte of its text, ``TEMPLATE_MARGIN`` for the
template's own). Then, with ``P`` prompt tokens and ``K`` requested new tokens:

- ``P`` over ``max_prompt_length`` (training): refused, as the trainer would drop its row;
- ``P`` at or over the model's context: refused (400 ``context_length_exceeded``, vLLM's message);
- ``K`` over ``max_response_length`` (training, ``K`` unset counting as over): capped to it;
- ``P + K`` over the model's context: ``K`` capped to the room left (as verl's own agent loop does).

A capped call's body is the client's JSON with only ``max_tokens`` / ``max_completion_tokens`` changed.
With no tokenizer or no known limit, or a call the guard cannot read (not JSON, images, a batch of
prompts, a template that fails), the call goes on unchanged, as it would without the guard.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import aiohttp

logger = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""What vLLM (and OpenAI) generate for a completions call without ``max_tokens``."""
TEMPLATE_MARGIN = 2048
"""Tokens a chat template may add beyond the bytes of the body (role markers, a default system prompt, tool text)."""
MAX_WAITING = 64
"""Calls waiting to be tokenized at most; past it, calls go on unchecked (as without the guard) and are counted."""
LOOP_BYTES = 64 * 1024
"""Bodies up to this size are parsed (and a capped one re-encoded) on the event loop, in microseconds; larger ones
in the guard's thread."""
MODELS_TIMEOUT_SECONDS = 5.0
"""Longest wait for a backend's ``/v1/models`` (a backend that does not answer is asked again at the next batch)."""
REFUSED_CODE = "context_length_exceeded"
_T = TypeVar("_T")


class Tokenizer(Protocol):
    """What the guard uses of a Hugging Face tokenizer."""

    def apply_chat_template(self, conversation: Any, *args: Any, **kwargs: Any) -> Any: ...

    def encode(self, text: str, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class TrainerLimits:
    """The trainer's row lengths: a longer prompt's row is dropped, a longer response truncated."""

    max_prompt_length: int
    max_response_length: int


@dataclass(frozen=True)
class Checked:
    """What the guard made of a call: the body to send, or why it is refused (and the field it names)."""

    body: bytes
    refusal: str | None = None
    param: str = "messages"


class ContextGuard:
    """Caps or refuses over-long calls (module docstring); ``check`` runs on the proxy's event loop."""

    def __init__(
        self,
        tokenizer: Tokenizer | None = None,
        *,
        model_context: int | None = None,
        trainer: TrainerLimits | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.tokenizer = tokenizer
        self.model_contexts: dict[str, int] = {}
        """The model's context by model name ("" for the one model a backend serves)."""
        if model_context is not None:
            self.model_contexts[""] = model_context
        self.trainer = trainer
        self.training = True
        """Whether the trainer's limits apply (a training step; validation rows are not trained on)."""
        self.counts: Counter[str] = Counter()
        self.tokenize_seconds = 0.0
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None
        self._waiting = 0
        self._asked: set[str] = set()
        self._learning: asyncio.Task[bool] | None = None

    # -- limits ------------------------------------------------------------------------

    def context_of(self, model: object) -> int | None:
        """The context of ``model`` (a call's ``model``), if known."""
        if isinstance(model, str) and model in self.model_contexts:
            return self.model_contexts[model]
        return self.model_contexts.get("")

    def learn_models(self, answer: object) -> bool:
        """Take the ``max_model_len`` of each model in a ``GET /v1/models`` answer; whether any was given."""
        cards = [_dict(card) for card in _list(_dict(answer).get("data"))]
        lengths: dict[str, int] = {
            str(card.get("id")): card["max_model_len"] for card in cards if _positive(card.get("max_model_len"))
        }
        self.model_contexts.update(lengths)
        if len(lengths) == 1:
            self.model_contexts[""] = next(iter(lengths.values()))
        return bool(lengths)

    def learn_in_background(self, addresses: Iterable[str]) -> asyncio.Task[bool] | None:
        """``learn_model_context`` as a task of the running loop, unless known or under way (that task, then): a
        backend slow to answer delays no batch, and calls meanwhile go on unchecked as without the guard."""
        if self.tokenizer is None or self.model_contexts:
            return None
        if self._learning is None or self._learning.done():
            self._learning = asyncio.get_running_loop().create_task(self.learn_model_context(list(addresses)))
        return self._learning

    async def learn_model_context(self, addresses: Iterable[str], timeout: float = MODELS_TIMEOUT_SECONDS) -> bool:
        """Ask backends (``host:port`` or URLs) for ``/v1/models`` until one gives ``max_model_len``; each is
        asked once (until one answers). Whether the model's context is known. Not asked without a tokenizer."""
        if self.tokenizer is None or self.model_contexts:
            return bool(self.model_contexts)
        fresh = [address for address in addresses if address not in self._asked]
        if not fresh:
            return False
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            for address in fresh:
                self._asked.add(address)
                base = address if "://" in address else f"http://{address}"
                try:
                    async with session.get(f"{base.rstrip('/')}/v1/models") as answer:
                        if answer.status == 200 and self.learn_models(await answer.json(content_type=None)):
                            logger.info("LLM proxy: the model's context is %s tokens", self.model_contexts[""])
                            return True
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
                    self._asked.discard(address)  # not answering (yet): asked again next time
        logger.info("LLM proxy: the backends do not say their model's context; over-long calls go on unchecked")
        return False

    # -- calls ---------------------------------------------------------------------------

    async def check(self, path: str, body: bytes) -> Checked:
        """The body to send for a call to ``path`` (``/v1/...``), capped, or the call's refusal."""
        if self.tokenizer is None or (not self.model_contexts and (self.trainer is None or not self.training)):
            return Checked(body)
        route = path.split("?", 1)[0].rstrip("/")
        if route not in (CHAT_PATH, COMPLETIONS_PATH):
            return Checked(body)
        parsed = _parsed(body) if len(body) <= LOOP_BYTES else await self._off_loop(_parsed, body)
        request = _dict(parsed)
        if not request:  # not a JSON object, or too many calls waiting
            return Checked(body)
        fields = _budget_fields(request, chat=route == CHAT_PATH)
        if fields is None:
            return Checked(body)
        requested = _requested(request, fields, chat=route == CHAT_PATH)
        context = self.context_of(request.get("model"))
        trainer = self.trainer if self.training else None
        allowed = requested
        if trainer is not None and (requested is None or requested > trainer.max_response_length):
            allowed = trainer.max_response_length
        if _cannot_reach(len(body) + TEMPLATE_MARGIN, allowed, context, trainer):
            return await self._capped(request, body, fields, requested, allowed)
        prompt = await self._tokenized(request, chat=route == CHAT_PATH)
        if prompt is None:
            return Checked(body)
        param = "messages" if route == CHAT_PATH else "prompt"
        if context is not None and prompt >= context:
            self.counts["context_refused"] += 1
            asked = requested or 0
            message = (
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{prompt + asked} tokens ({prompt} in the {param}, {asked} in the completion). "
                f"Please reduce the length of the {param} or completion."
            )
            return Checked(body, message, param)
        if trainer is not None and prompt > trainer.max_prompt_length:
            self.counts["context_refused_prompt"] += 1
            message = (
                f"This call's prompt has {prompt} tokens, over the trainer's max_prompt_length of "
                f"{trainer.max_prompt_length}: its row would be dropped from training, so it is not generated. "
                f"Please reduce the length of the {param}."
            )
            return Checked(body, message, param)
        if context is not None and allowed is not None and prompt + allowed > context:
            allowed = context - prompt
        return await self._capped(request, body, fields, requested, allowed)

    def stats(self) -> dict[str, Any]:
        """The guard's counters since the start (``LlmProxy.stats`` holds them)."""
        return {
            **{name: self.counts[name] for name in STATS},
            "context_tokenize_seconds": self.tokenize_seconds,
            "model_context": self.context_of(None) or 0,
        }

    def close(self) -> None:
        """Let the tokenizing thread end (calls being tokenized finish first)."""
        if self._learning is not None:
            self._learning.cancel()
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    async def _capped(
        self, request: dict[str, Any], body: bytes, fields: Sequence[str], requested: int | None, allowed: int | None
    ) -> Checked:
        """``body`` with ``fields`` set to ``allowed`` (re-encoded in the guard's thread when large)."""
        if allowed is None or allowed == requested:
            return Checked(body)
        for field in fields:
            request[field] = allowed
        capped = _encoded(request) if len(body) <= LOOP_BYTES else await self._off_loop(_encoded, request)
        if capped is None:
            return Checked(body)
        self.counts["context_capped"] += 1
        if requested is not None:
            self.counts["context_capped_tokens"] += requested - allowed
        return Checked(capped)

    async def _tokenized(self, request: dict[str, Any], *, chat: bool) -> int | None:
        """The prompt's token count, counted in the guard's thread; None if it cannot be counted."""
        tokenizer = self.tokenizer
        if tokenizer is None:
            return None
        started = self._clock()
        count = await self._off_loop(_count, tokenizer, request, chat)
        if count is None:
            return None
        self.tokenize_seconds += self._clock() - started
        self.counts["context_tokenized" if count >= 0 else "context_unreadable"] += 1
        return count if count >= 0 else None

    async def _off_loop(self, function: Callable[..., _T], *args: Any) -> _T | None:
        """``function(*args)`` in the guard's thread; None, counted, when ``MAX_WAITING`` calls wait for it."""
        if self._waiting >= MAX_WAITING:
            self.counts["context_unchecked_busy"] += 1
            return None
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-proxy-tokenize")
        self._waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        finally:
            self._waiting -= 1


STATS = (
    "context_tokenized",
    "context_capped",
    "context_capped_tokens",
    "context_refused",
    "context_refused_prompt",
    "context_unreadable",
    "context_unchecked_busy",
)
"""The guard's counters, in ``LlmProxy.stats()``."""


def _positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _budget_fields(request: dict[str, Any], *, chat: bool) -> list[str] | None:
    """The fields naming the call's new tokens (to cap), or None for a call the guard leaves alone."""
    names = ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",)
    present = [name for name in names if request.get(name) is not None]
    if any(not _positive(request[name]) for name in present):
        return None  # vLLM's own error
    if chat:
        messages = _list(request.get("messages"))
        if not messages or not all(_text_only(message) for message in messages):
            return None
    elif not isinstance(request.get("prompt"), str) and not _ids(request.get("prompt")):
        return None  # a batch of prompts, or nothing
    return present or ["max_tokens"]


def _requested(request: dict[str, Any], fields: Sequence[str], *, chat: bool) -> int | None:
    for name in fields:  # max_completion_tokens first: vLLM takes it over max_tokens
        if request.get(name) is not None:
            return int(request[name])
    return None if chat else COMPLETIONS_DEFAULT_MAX_TOKENS


def _dict(value: object) -> dict[str, Any]:
    """A JSON object's fields ({} for anything else)."""
    return cast(dict[str, Any], value) if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    """A JSON array's items ([] for anything else)."""
    return cast(list[Any], value) if isinstance(value, list) else []


def _text_only(message: object) -> bool:
    fields = _dict(message)
    if not fields:
        return False
    content: object = fields.get("content")
    if content is None or isinstance(content, str):
        return True
    parts = _list(content)
    return bool(parts) and all(_dict(part).get("type") == "text" for part in parts)


def _ids(prompt: object) -> bool:
    items = _list(prompt)
    return bool(items) and all(isinstance(item, int) for item in items)


def _cannot_reach(bound: int, allowed: int | None, context: int | None, trainer: TrainerLimits | None) -> bool:
    """Whether a prompt of at most ``bound`` tokens, with ``allowed`` new ones, is within every limit."""
    if trainer is not None and bound > trainer.max_prompt_length:
        return False
    return context is None or bound + (allowed or 1) <= context


def _parsed(body: bytes) -> object:
    """The body's JSON ({} if it is not JSON)."""
    try:
        return json.loads(body)
    except ValueError:
        return {}


def _encoded(request: dict[str, Any]) -> bytes:
    return json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode()


def _count(tokenizer: Tokenizer, request: dict[str, Any], chat: bool) -> int:
    """The prompt's tokens as vLLM would count them (run in the guard's thread); -1 when they cannot be counted."""
    try:
        if not chat:
            prompt: object = request["prompt"]
            ids = _list(prompt) or _as_ids(tokenizer.encode(str(prompt)))
            return len(ids)
        messages = [_flattened(_dict(message)) for message in _list(request["messages"])]
        kwargs = request.get("chat_template_kwargs")
        ids = tokenizer.apply_chat_template(
            messages,
            tools=request.get("tools"),
            add_generation_prompt=request.get("add_generation_prompt", True),
            tokenize=True,
            **(kwargs if isinstance(kwargs, dict) else {}),
        )
        return len(_as_ids(ids))
    except Exception:
        logger.debug("LLM proxy: could not count a call's prompt tokens", exc_info=True)
        return -1


def _flattened(message: dict[str, Any]) -> dict[str, Any]:
    """The message with a list of text parts as one string, as vLLM gives string-format templates."""
    parts = _list(message.get("content"))
    if parts:
        return {**message, "content": "\n".join(str(_dict(part).get("text", "")) for part in parts)}
    return message


def _as_ids(encoded: Any) -> list[Any]:
    """Token ids from what a tokenizer returned: a list, a batch of one, or an encoding with ``input_ids``."""
    ids = _list(encoded["input_ids"] if hasattr(encoded, "input_ids") or _dict(encoded) else encoded)
    first: object = ids[0] if ids else None
    return _list(first) or ids
