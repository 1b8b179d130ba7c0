"""The store: a synchronous state machine of tasks, claims (attempts) and results, with no ``await`` inside.

- ``datastore``: ``AttemptAwareDataStore``, the coordinator upstream's server calls: claims, heartbeats, API;
- ``submissions``: a submitted result carried to its outcome;
- ``table``: README's outcome table as data: which outcome a submission gets;
- ``expiry``: claims that end without a result (timeouts, silence, releases), and giving up after ``max_claims``;
- ``tasks``: where each task is (waiting, claimed, finished) and the moves between, with their invariants;
- ``records``: the record of each attempt, of each task claimed and not finished, of each finished task;
- ``queue``: the tasks waiting for a claim;
- ``claim_index``: the live claims in deadline and last-heard order, so that expiry looks at two fronts;
- ``finished``: the bounded memory of finished tasks, to answer late results;
- ``answers``: what a submission, a heartbeat and a release are answered;
- ``counters``: the counts by outcome and drop reason.
"""

from .answers import Lease, Release, Submission
from .datastore import AttemptAwareDataStore, Clock, check_options
from .finished import DEFAULT_MAX_REMEMBERED
from .records import AttemptOutcome, excerpt
from .table import STALE_POLICIES, DropReason, StalePolicy

__all__ = [
    "DEFAULT_MAX_REMEMBERED",
    "STALE_POLICIES",
    "AttemptAwareDataStore",
    "AttemptOutcome",
    "Clock",
    "DropReason",
    "Lease",
    "Release",
    "StalePolicy",
    "Submission",
    "check_options",
    "excerpt",
]
