"""An attempt-aware LLM proxy for verl's v0 daemon, in place of upstream's Flask one (``_start_proxy_server_v0``).

``LlmProxy`` (ASGI) forwards ``/v1/...`` and ``/rollout/{rollout_id}/attempt/{attempt_id}/v1/...``
to the backends, streams answers through, refuses the calls of attempts that are no longer
live (409, OpenAI-style), keeps each attempt on one backend, records the token ids of each
attempt's calls, passes over a backend that keeps failing (``BackendHealth``), re-sends a call
to another backend while no byte of its answer went out, and counts what it did;
``serve_proxy`` serves it on the running event loop.
"""

from __future__ import annotations

from .app import Liveness, LlmProxy
from .attached import AttachedProxy
from .bodies import BodyBudget
from .health import BackendHealth
from .records import CallRecord, CallRecords
from .routing import BackendRouter, Backends
from .serving import ProxyServer, serve_proxy
from .stats import RefusalSummary, latency_between
from .targets import Attempt

__all__ = [
    "AttachedProxy",
    "Attempt",
    "BackendHealth",
    "BackendRouter",
    "Backends",
    "BodyBudget",
    "CallRecord",
    "CallRecords",
    "Liveness",
    "LlmProxy",
    "ProxyServer",
    "RefusalSummary",
    "latency_between",
    "serve_proxy",
]
