"""LLM endpoints a worker on another host can reach: a loopback host answered as the host the worker used.

verl's daemon (v0) binds its server and its LLM proxy to ``0.0.0.0`` but publishes
``main_llm`` as ``http://127.0.0.1:<proxy port>/v1``: a worker on another machine is handed
its own loopback. The worker reached the server by some address, the ``Host`` of its
request; the proxy listens on the same machine, so that address reaches the proxy too.

``reachable_resources`` rewrites, in a served copy of a resources update, the endpoint of each
LLM resource whose host is a loopback name or address, keeping scheme, credentials, port, path
and query. Nothing else changes: non-loopback endpoints, other resources, and everything when
the worker itself came over loopback or sent no usable ``Host``.

``attempt_endpoint`` names an attempt in an endpoint of the daemon's attempt-aware LLM proxy
(``/v1`` becomes ``/rollout/{rollout_id}/attempt/{attempt_id}/v1``, agentlightning 0.2+'s shape),
as the shim hands it to its agent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import SplitResult, quote, urlsplit

from .hosts import is_loopback_host, request_host


def reachable_endpoint(endpoint: str, host_header: str | None) -> str:
    """``endpoint`` with a loopback host replaced by the host of ``host_header``; otherwise unchanged."""
    host = request_host(host_header)
    if host is None or is_loopback_host(host):
        return endpoint
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        return endpoint
    if parts.hostname is None or not is_loopback_host(parts.hostname):
        return endpoint
    credentials = parts.netloc.rpartition("@")[0]
    netloc = (credentials + "@" if credentials else "") + host + ("" if port is None else f":{port}")
    return SplitResult(parts.scheme, netloc, parts.path, parts.query, parts.fragment).geturl()


def attempt_path(rollout_id: str, attempt_id: str) -> str:
    """The path prefix of an attempt's calls on the proxy (ids percent-encoded; ``/v1/...`` follows)."""
    return f"/rollout/{quote(rollout_id, safe='')}/attempt/{quote(attempt_id, safe='')}"


def attempt_endpoint(endpoint: str, port: int, rollout_id: str, attempt_id: str) -> str:
    """``endpoint`` scoped to the attempt when it is the ``/v1`` of the attempt-aware proxy on ``port``; otherwise
    unchanged. Scheme, host, port, query and a trailing slash are kept."""
    try:
        parts = urlsplit(endpoint)
        endpoint_port = parts.port
    except ValueError:
        return endpoint
    if parts.scheme not in ("http", "https") or endpoint_port != port or parts.path.rstrip("/") != "/v1":
        return endpoint
    path = attempt_path(rollout_id, attempt_id) + parts.path
    return SplitResult(parts.scheme, parts.netloc, path, parts.query, parts.fragment).geturl()


def reachable_resources(update: Mapping[str, Any], host_header: str | None) -> dict[str, Any]:
    """A resources update as JSON (``ResourcesUpdate.model_dump(mode="json")``), its LLM endpoints made reachable.

    Returns a new dict; ``update`` is not changed. An LLM resource is one whose
    ``resource_type`` names an LLM (``llm``, ``proxy_llm``) and that has a string ``endpoint``.
    """
    resources = update.get("resources")
    if not isinstance(resources, Mapping):
        return dict(update)
    served: dict[str, Any] = {}
    for name, resource in cast(Mapping[str, Any], resources).items():
        if _is_llm(resource):
            endpoint: str = resource["endpoint"]
            rewritten = reachable_endpoint(endpoint, host_header)
            if rewritten != endpoint:
                resource = {**resource, "endpoint": rewritten}
        served[name] = resource
    return {**update, "resources": served}


def _is_llm(resource: Any) -> bool:
    if not isinstance(resource, Mapping):
        return False
    fields = cast(Mapping[str, Any], resource)
    kind, endpoint = fields.get("resource_type"), fields.get("endpoint")
    return isinstance(kind, str) and "llm" in kind.lower() and isinstance(endpoint, str)
