"""The resources a claim's agent is handed: its LLM endpoints on the daemon's attempt-aware proxy name its attempt.

verl's daemon publishes one LLM endpoint for every worker (``http://<host>:<proxy port>/v1``).
When the server says its proxy is attempt-aware (``AttemptTask.llm_proxy_port``), the shim
hands the claim's agent that endpoint as ``.../rollout/{rollout_id}/attempt/{attempt_id}/v1``,
so that the proxy knows whose calls they are: it refuses them once the attempt is no longer
live and keeps their token ids for the attempt. Upstream's client caches each resources
version by id: the cache keeps what the server served, and each claim gets its own copy.
"""

from __future__ import annotations

from typing import Any

from ..compat import ResourcesUpdate
from ..endpoints import attempt_endpoint
from .claims import Claim


def scoped(update: ResourcesUpdate, claim: Claim) -> ResourcesUpdate:
    """``update`` with each LLM resource on the claim's proxy scoped to its attempt (a copy; ``update`` as it was).

    ``update`` itself when nothing is on that proxy, or the server named none (an old server, or
    upstream's proxy).
    """
    port = claim.llm_proxy_port
    if port is None:
        return update
    resources: dict[str, Any] = {}
    changed = False
    for name, resource in update.resources.items():
        endpoint = getattr(resource, "endpoint", None)
        if getattr(resource, "resource_type", None) == "llm" and isinstance(endpoint, str):
            own = attempt_endpoint(endpoint, port, claim.rollout_id, claim.attempt_id)
            if own != endpoint:
                resource = resource.model_copy(update={"endpoint": own})
                changed = True
        resources[name] = resource
    return update.model_copy(update={"resources": resources}) if changed else update
