"""The live view of a run at ``/dashboard``, and agentlightning 0.3.0's read routes (``/v1/agl/*``) over the store.

- ``views``: the store's tasks and claims as 0.3.0's rollouts and attempts, a bounded page at a time.
- ``routes``: ``DashboardRoutes``, the GET routes on the server's app, and the page (``static/index.html``).
- ``steps``: ``StepLog``, the last steps' ``attempts/*`` figures (verl's daemon writes them).
- ``grafana.json``: a Grafana dashboard over ``/metrics``.
"""

from __future__ import annotations

from .routes import DashboardRoutes, ProxyReadout
from .steps import StepLog

__all__ = ["DashboardRoutes", "ProxyReadout", "StepLog"]
