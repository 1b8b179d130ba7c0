"""The store: a synchronous state machine of tasks, claims (attempts) and results, with no ``await`` inside.

- ``datastore``: ``AttemptAwareDataStore``, the coordinator upstream's server calls;
- ``records``: the record of each attempt, of each task claimed and not finished, of each finished task;
- ``queue``: the tasks waiting for a claim;
- ``claim_index``: the live claims in deadline and last-heard order, so that expiry looks at two fronts;
- ``finished``: the bounded memory of finished tasks, to answer late results;
- ``table``: README's outcome table as data: what becomes of a submission;
- ``answers``: what a submission, a heartbeat and a release are answered;
- ``counters``: the counts by outcome and drop reason.
"""

from .answers import Lease, Release, Submission
from .datastore import AttemptAwareDataStore, Clock
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
    "excerpt",
]
