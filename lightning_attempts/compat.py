"""Every difference between the supported agentlightning releases, in one place.

Supported: agentlightning 0.1, 0.1.1, 0.1.2, 0.2.0, 0.2.1, 0.2.2 and 0.3.0. They all
ship the legacy HTTP server this package patches; 1.0 removed it.

- 0.1.x: the legacy result model is ``agentlightning.types.Rollout`` (a module).
- 0.2+: it is ``agentlightning.types.RolloutLegacy``; ``types`` is a package and
  ``Rollout`` is a new, unrelated model. Constructing the legacy client and server
  emits a DeprecationWarning.
- 0.3.0: ``ResourcesUpdate`` gained ``create_time``, ``update_time`` and ``version``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .releases import AGENTLIGHTNING_VERSION, SUPPORTED_RANGE, SUPPORTED_RELEASES, unsupported

# agentlightning 0.2+ imports litellm, which otherwise stalls for seconds fetching a
# price map on machines without internet access; the local copy is equivalent.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

try:
    from agentlightning import types as _types
    from agentlightning.client import AgentLightningClient
    from agentlightning.server import AgentLightningServer, ServerDataStore
    from agentlightning.types import GenericResponse, ResourcesUpdate, Task, TaskIfAny
except ImportError as exc:
    found = f"agentlightning {AGENTLIGHTNING_VERSION} could not be imported with its legacy server ({exc})"
    raise unsupported(found) from exc

try:  # 0.2+
    from agentlightning.runner import LegacyAgentRunner as LegacyRunner
except ImportError:  # 0.1.x
    from agentlightning.runner import AgentRunner as LegacyRunner  # pyright: ignore[reportAttributeAccessIssue, reportUnknownVariableType]
"""The runner that polls the legacy server: ``LegacyAgentRunner`` (0.2+) or ``AgentRunner`` (0.1.x)."""

if TYPE_CHECKING:
    from agentlightning.types import RolloutLegacy as LegacyRollout
else:
    LegacyRollout = getattr(_types, "RolloutLegacy", None) or _types.Rollout
"""The legacy result model posted to ``/rollout``: ``RolloutLegacy`` (0.2+) or ``Rollout`` (0.1.x)."""

ROLLOUT_ECHOES_TASK = "task" in LegacyRollout.model_fields
"""0.2+ rollouts can carry the task they answer (``rollout.task``); 0.1.x ones cannot."""

# 0.2+ declares RolloutLegacy before Task, leaving it to be completed on first use in its own
# module; complete it now, or a subclass elsewhere could not resolve its annotations.
LegacyRollout.model_rebuild()

__all__ = [
    "AGENTLIGHTNING_VERSION",
    "ROLLOUT_ECHOES_TASK",
    "SUPPORTED_RANGE",
    "SUPPORTED_RELEASES",
    "AgentLightningClient",
    "AgentLightningServer",
    "GenericResponse",
    "LegacyRollout",
    "LegacyRunner",
    "ResourcesUpdate",
    "ServerDataStore",
    "Task",
    "TaskIfAny",
]
