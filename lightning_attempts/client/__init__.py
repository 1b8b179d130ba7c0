"""The attempt-aware client: upstream's legacy client, carrying each claim's attempt id to its submission.

The upstream runner builds the rollout it posts from ``task.rollout_id`` alone, so the
attempt id the server handed out is lost between poll and post. ``AttemptAwareClient``
remembers each claim and submits its result with the claim's attempt id, gives back the
claims it will not submit, long-polls ``/task`` and heartbeats claims under a lease. Its
parts, one concern each:

- ``client.py``: ``AttemptAwareClient``, upstream's client with its I/O overridden: it runs
  the protocol's steps with a sync driver and an async one, which only do the I/O;
- ``protocol.py``: each protocol step, written once for both paths: the long poll, the
  claim, the submission, the release, the heartbeat;
- ``claims.py``: the claim book, and which claim a submission belongs to (in order);
- ``resources.py``: the resources handed to a claim's agent, LLM endpoints on verl's daemon's
  attempt-aware proxy naming the attempt;
- ``transport.py``: pooled httpx connections per process and per event loop, the retry policy;
- ``heartbeats.py``: the background heartbeats of claims under a lease;
- ``lifecycle.py``: releases at exit and when a multiprocessing worker ends, resets after a fork;
- ``producer.py``: ``RemoteServer``, the trainer's side (queue, publish, wait, take) of a server in
  another process, over HTTP.

Every part logs on the ``lightning_attempts.client`` logger.
"""

from __future__ import annotations

from .claims import MAX_OPEN_CLAIMS, Claim
from .client import DEFAULT_POLL_WAIT, AttemptAwareClient
from .producer import RemoteServer
from .protocol import RELEASE_TIMEOUT

__all__ = ["DEFAULT_POLL_WAIT", "MAX_OPEN_CLAIMS", "RELEASE_TIMEOUT", "AttemptAwareClient", "Claim", "RemoteServer"]
