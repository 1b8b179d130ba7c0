"""Asking vLLM for the token ids of an attempt's streamed call: ``"return_token_ids": true`` in its JSON body.

agentlightning's vLLM instrumentation (``instrument_vllm``, which its verl server applies on every
release) adds ``prompt_token_ids`` and ``response_token_ids`` to whole answers only; vLLM 0.10.2+
puts ids in a stream's chunks only when the request asks (``return_token_ids``), and agents do not
ask. So the proxy asks for them in an attempt-scoped streamed completion (the calls it records),
unless the request already says ``return_token_ids`` either way: the agent's word stands. vLLM
before 0.10.2 ignores the field (its log notes the fields it ignored) and streams no ids, asked or not.

The body's bytes are read, not parsed: ``"stream": true`` anywhere in it (an escaped quote inside
a message cannot match) and a body that is a JSON object. The field goes first, so the body stays
valid JSON; nothing else in it changes. It costs a scan of the body, and a copy of a streamed one:
about 10 µs for a 10 kB body, 1 ms for 1 MB (a loaded 2-core machine).
"""

from __future__ import annotations

import re

COMPLETION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
"""The backend paths whose streamed answers can carry token ids."""
FIELD = b'"return_token_ids":true'
_TRUE = re.compile(rb"\s*:\s*true")
_COLON = re.compile(rb"\s*:")
_OPENING = re.compile(rb"\s*\{\s*")


def asking_for_token_ids(path: str, body: bytes) -> bytes:
    """``body`` with ``"return_token_ids": true`` when it is a streamed completion that says nothing of it."""
    if path not in COMPLETION_PATHS or not _key(body, b'"stream"', _TRUE) or _key(body, b'"return_token_ids"', _COLON):
        return body
    opening = _OPENING.match(body)
    if opening is None:
        return body  # not a JSON object
    end = opening.end()
    separator = b"" if body[end : end + 1] == b"}" else b","
    return b"".join((body[:end], FIELD, separator, memoryview(body)[end:]))  # one copy of the body


def _key(body: bytes, key: bytes, after: re.Pattern[bytes]) -> bool:
    """Whether ``key`` (quoted) is somewhere followed by ``after``: ``bytes.find`` scans, the pattern only checks."""
    at = body.find(key)
    while at != -1:
        if after.match(body, at + len(key)):
            return True
        at = body.find(key, at + len(key))
    return False
