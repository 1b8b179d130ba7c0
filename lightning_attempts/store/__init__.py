"""The store: a synchronous state machine of tasks, claims (attempts) and results, with no ``await`` inside.

- ``datastore``: ``AttemptAwareDataStore``, what upstream's server calls: claims, heartbeats, upstream's API;
- ``transitions``: every way an attempt ends: a submitted result by README's outcome table (its
  situation, the rule, the rule's effect), and claims that end without one (timeouts, silence,
  releases, cancellations, giving up after ``max_claims``);
- ``table``: README's outcome table as data: which action a submission gets;
- ``tasks``: where each task is (waiting, claimed, finished) and the moves between, with their invariants;
- ``records``: the record of each attempt, of each task claimed and not finished, of each finished task;
- ``queue``: the tasks waiting for a claim;
- ``claim_index``: the live claims in deadline and last-heard order, so that expiry looks at two fronts;
- ``budget``: what each task has spent of its ``task_budget`` (time worked on), and which runs out next;
- ``finished``: the bounded memory of finished tasks, to answer late results;
- ``answers``: what a submission, a heartbeat and a release are answered;
- ``stranded``: claims the server ended whose workers never came back (stuck in their agents, or dead);
- ``counters``: the counts by outcome and drop reason.
"""

from .answers import Lease, ReleaseAnswer, Submission
from .datastore import AttemptAwareDataStore
from .records import AttemptOutcome, excerpt
from .table import DropReason

__all__ = [
    "AttemptAwareDataStore",
    "AttemptOutcome",
    "DropReason",
    "Lease",
    "ReleaseAnswer",
    "Submission",
    "excerpt",
]
