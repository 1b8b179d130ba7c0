"""What a request to the proxy names: the backend path (``/v1/...``) and, for attempt-scoped URLs, the attempt.

Two shapes: ``/v1/{path}`` (upstream's proxy, old workers) and
``/rollout/{rollout_id}/attempt/{attempt_id}/v1/{path}`` (agentlightning 0.2+'s ``LLMProxy``).
A backend path with a dot segment (``/v1/../sleep``, percent-encoded or not) is refused
(``DotSegments``): the backend would resolve it to a route outside ``/v1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

_V1 = b"/v1/"
_ROLLOUT = b"/rollout/"
_ATTEMPT = b"attempt"


class DotSegments(ValueError):
    """The backend path has a ``.`` or ``..`` segment."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a rollout: the key of its route and of its recorded calls."""

    rollout_id: str
    attempt_id: str


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: ``upstream_path`` as received (still percent-encoded), for the attempt if any."""

    upstream_path: str
    attempt: Attempt | None


def parse_target(raw_path: bytes) -> Target | None:
    """The target of a request path, or None when the path is neither shape; ``DotSegments`` if it climbs."""
    if raw_path.startswith(_V1):
        return Target(_checked(raw_path.decode("latin-1")), None)
    if not raw_path.startswith(_ROLLOUT):
        return None
    parts = raw_path.split(b"/", 5)  # ["", "rollout", rid, "attempt", aid, "v1/..."]
    if len(parts) < 6 or parts[3] != _ATTEMPT or not parts[2] or not parts[4] or not parts[5].startswith(b"v1/"):
        return None
    attempt = Attempt(unquote(parts[2].decode("latin-1")), unquote(parts[4].decode("latin-1")))
    return Target(_checked("/" + parts[5].decode("latin-1")), attempt)


def _checked(path: str) -> str:
    """``path``, unless a segment of it, percent-decoded, is ``.`` or ``..``."""
    if ("." in path or "%" in path) and any(segment in (".", "..") for segment in unquote(path).split("/")):
        raise DotSegments(path)
    return path
