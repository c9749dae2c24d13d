"""The job's states as DICOM Unified Procedure Step states, and the changes UPS allows.

A job is one procedure step (PS3.4 Annex CC): SCHEDULED, then IN PROGRESS once a runner claims
it, then COMPLETED or CANCELED; a SCHEDULED step may also be canceled. Nothing goes back: a
transient failure keeps the step IN PROGRESS (its attempts counted) and an operator's retry is a
new step that references the old one.
"""

from __future__ import annotations

import itertools
from enum import StrEnum


class JobState(StrEnum):
    """UPS procedure step states (PS3.4 Table CC.1.1-1)."""

    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"


# PS3.4 Table CC.1.1-2: the state changes a procedure step may make.
ALLOWED_TRANSITIONS = frozenset(
    {
        (JobState.SCHEDULED, JobState.IN_PROGRESS),
        (JobState.SCHEDULED, JobState.CANCELED),
        (JobState.IN_PROGRESS, JobState.COMPLETED),
        (JobState.IN_PROGRESS, JobState.CANCELED),
    }
)


def forbidden_transitions(states: list[str]) -> list[tuple[str, str]]:
    """The state changes in a job's timeline (its events' states, in order) that PS3.4
    Table CC.1.1-2 does not allow; notes within one state are not changes."""
    changes = [(a, b) for a, b in itertools.pairwise(states) if a != b]
    return [(a, b) for a, b in changes if (JobState(a), JobState(b)) not in ALLOWED_TRANSITIONS]
