"""The rows of the job table (:mod:`listener.store.jobs`): a job, and a runner's lease on it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from listener.store.db import Row
from listener.store.ups import JobState


@dataclass(frozen=True)
class Lease:
    """A runner's hold on a claimed job: every change it makes names all three."""

    job_id: int
    owner: str
    token: int


@dataclass(frozen=True)
class Job:
    """One row of the job table."""

    id: int
    job_key: str
    study_uid: str
    generation: int
    rule: str
    task: str
    payload: dict[str, Any]
    priority: int
    state: JobState
    attempts: int
    max_attempts: int
    last_error: str | None
    outputs: list[str]
    not_before: float
    created_at: float
    updated_at: float
    lease_owner: str | None = None
    lease_until: float | None = None
    lease_token: int = 0
    waiting_for: str | None = None
    retry_of: int | None = None

    @property
    def lease(self) -> Lease | None:
        """The lease of the runner holding this job, when one does."""
        if self.lease_owner is None:
            return None
        return Lease(self.id, self.lease_owner, self.lease_token)

    @classmethod
    def from_row(cls, row: Row) -> Job:
        return cls(
            id=row["id"],
            job_key=row["job_key"],
            study_uid=row["study_uid"],
            generation=row["generation"],
            rule=row["rule"],
            task=row["task"],
            payload=json.loads(row["payload"]),
            priority=row["priority"],
            state=JobState(row["state"]),
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            last_error=row["last_error"],
            outputs=json.loads(row["outputs"] or "[]"),
            not_before=row["not_before"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            lease_owner=row["lease_owner"],
            lease_until=row["lease_until"],
            lease_token=row["lease_token"],
            waiting_for=row["waiting_for"],
            retry_of=row["retry_of"],
        )
