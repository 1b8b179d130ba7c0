"""The differences between the verl daemons of agentlightning 0.1.x and 0.2/0.3 that ``AttemptAwareDaemon`` meets.

- 0.1.x: ``AgentModeDaemon`` has one mode (the legacy server, what 0.2+ calls v0) and keeps
  the batch's results in ``_completed_rollouts``; its wait takes whatever the server holds,
  results of other batches included.
- 0.2+: ``mode`` is ``"v0"`` (the legacy server) or ``"v1"`` (LightningStore, the default
  when the daemon is built directly); the results of either are in ``_completed_rollouts_v0``;
  its wait skips results of rollouts it did not queue. ``get_train_data_batch`` takes
  ``global_steps`` from 0.3.0 on.

Importing this module imports upstream's daemon, hence verl and torch.
"""

from __future__ import annotations

from typing import Any

from agentlightning.verl.daemon import (
    AgentModeDaemon as UpstreamDaemon,  # pyright: ignore[reportUnknownVariableType]
)

__all__ = ["UpstreamDaemon", "completed_rollouts", "legacy_mode"]


def legacy_mode(daemon: Any) -> bool:
    """Whether ``daemon`` drives the legacy server (0.1.x always; 0.2+ in ``mode="v0"``)."""
    return getattr(daemon, "mode", "v0") == "v0"


def completed_rollouts(daemon: Any) -> dict[str, Any]:
    """The dict in which the daemon keeps the current batch's results, by rollout id."""
    found = getattr(daemon, "_completed_rollouts_v0", None)  # 0.2+
    if found is None:
        found = daemon._completed_rollouts  # 0.1.x
    return found
