"""Token ids in a backend's answer, where vLLM puts them.

- agentlightning's vLLM instrumentation (``instrument_vllm``, before vLLM 0.10.2): top-level
  ``prompt_token_ids`` (a list) and ``response_token_ids`` (a list per choice) in each
  non-streamed chat completion;
- vLLM 0.10.2+ asked for ``return_token_ids``: top-level ``prompt_token_ids`` and each
  choice's ``token_ids``, in a whole answer or spread over the chunks of a stream.

Only answers (or stream lines) that contain ``token_ids`` are parsed. Ids are kept as
``array('i')``, 4 bytes each, not as lists of Python ints (about 36 bytes each).
"""

from __future__ import annotations

import contextlib
import json
from array import array
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

TokenIds: TypeAlias = "array[int]"
"""``array('i')`` of token ids."""
_MARK = b"token_ids"
MAX_LINE_BYTES = 16 * 2**20
"""A stream line longer than this is not parsed (the stream still passes through)."""


def _ids(value: Any) -> TokenIds | None:
    if not isinstance(value, list):
        return None
    try:
        return array("i", cast(list[int], value))
    except (TypeError, OverflowError):
        return None


def _per_choice(answer: dict[str, Any]) -> list[tuple[int, Any]]:
    """``(choice index, its ids)`` in agentlightning's ``response_token_ids`` or in vLLM's ``choices[].token_ids``."""
    instrumented = answer.get("response_token_ids")
    if isinstance(instrumented, list) and instrumented:
        items = cast(list[Any], instrumented)
        return list(enumerate(items if all(isinstance(item, list) for item in items) else [items]))
    choices = answer.get("choices")
    found: list[tuple[int, Any]] = []
    for position, choice in enumerate(cast(list[Any], choices) if isinstance(choices, list) else []):
        if isinstance(choice, dict):
            fields = cast(dict[str, Any], choice)
            index = fields.get("index", position)
            found.append((index if isinstance(index, int) else position, fields.get("token_ids")))
    return found


@dataclass
class Tokens:
    """The token ids found in one answer: the prompt's, and the response's per choice index."""

    prompt: TokenIds | None = None
    responses: dict[int, TokenIds] = field(default_factory=lambda: cast("dict[int, TokenIds]", {}))

    def add(self, answer: Any, *, append: bool) -> None:
        """Take the ids of one parsed answer or stream chunk; ``append``: a chunk, continuing earlier ones."""
        if not isinstance(answer, dict):
            return
        fields = cast(dict[str, Any], answer)
        prompt = _ids(fields.get("prompt_token_ids"))
        if prompt is not None and self.prompt is None:
            self.prompt = prompt
        for index, value in _per_choice(fields):
            ids = _ids(value)
            if ids is None:
                continue
            if append and index in self.responses:
                self.responses[index].extend(ids)
            else:
                self.responses[index] = ids

    def response_list(self) -> tuple[TokenIds, ...] | None:
        """The response ids in choice order, or None when the answer had none."""
        if not self.responses:
            return None
        return tuple(self.responses[index] for index in sorted(self.responses))


def tokens_of_answer(body: bytes) -> Tokens:
    """The token ids of a whole (non-streamed) answer."""
    found = Tokens()
    if _MARK in body:
        with contextlib.suppress(ValueError):
            found.add(json.loads(body), append=False)
    return found


class StreamTokens:
    """The token ids of a server-sent event stream, fed chunk by chunk as it passes through."""

    def __init__(self) -> None:
        self.tokens = Tokens()
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        if b"\n" not in chunk:
            if len(self._partial) < MAX_LINE_BYTES:
                self._partial += chunk
            return
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.startswith(b"data:") and _MARK in line:
                with contextlib.suppress(ValueError):
                    self.tokens.add(json.loads(line[5:]), append=True)
