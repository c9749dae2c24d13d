"""Readiness: is every stage moving? Reasons why not, read from the journal and the disk.

A stage is stuck when work it owns is overdue by far more than normal jitter:

- disk: the spool's free space is under ``disk_min_free_mb`` (receivers refuse new instances);
- assemble: a receiving study's quiet period ended long ago but it was not released (no assemble
  worker is running);
- infer: a job is IN PROGRESS past its lease (its worker died or hangs), or a scheduled job has
  been due for long (no job worker is running);
- send: an outbox entry has been due for long (no sender is running, or it is wedged);
- supervision: a supervised process is crash-looping (its name and last error).
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass

from listener.admin.state import AdminState
from listener.store.records import SupervisedRecords


@dataclass(frozen=True)
class Thresholds:
    """How late work may be before the stage counts as stuck, in seconds."""

    release_late_s: float = 300.0
    job_due_late_s: float = 900.0
    lease_late_s: float = 60.0
    send_late_s: float = 900.0


def _overdue(limits: Thresholds) -> list[tuple[str, float, str]]:
    """Per check: a count query taking one "due before" time, the lateness allowed, the reason."""
    return [
        (
            "SELECT COUNT(*) FROM studies WHERE state = 'receiving' AND due_at < ?",
            limits.release_late_s,
            "assemble: {n} studies past their quiet period are not released",
        ),
        (
            "SELECT COUNT(*) FROM jobs WHERE state = 'IN PROGRESS' AND lease_until < ?",
            limits.lease_late_s,
            "infer: {n} jobs IN PROGRESS past their lease",
        ),
        (
            "SELECT COUNT(*) FROM jobs WHERE state = 'SCHEDULED' AND not_before < ?",
            limits.job_due_late_s,
            f"infer: {{n}} scheduled jobs overdue by over {limits.job_due_late_s:.0f} s",
        ),
        (
            "SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND next_attempt_at < ?",
            limits.send_late_s,
            f"send: {{n}} outbox entries overdue by over {limits.send_late_s:.0f} s",
        ),
    ]


def problems(state: AdminState, now: float, limits: Thresholds | None = None) -> list[str]:
    """Every reason the gateway is not ready; empty when it is."""
    limits = limits or Thresholds()
    reasons = []
    free = state.spool.free_mb()
    if free < state.settings.disk_min_free_mb:
        reasons.append(
            f"disk: {free:.0f} MiB free on the spool, under disk_min_free_mb"
            f" ({state.settings.disk_min_free_mb} MiB)"
        )
    with closing(sqlite3.connect(state.db_path, timeout=10)) as db:
        for sql, allowed, reason in _overdue(limits):
            count = int(db.execute(sql, (now - allowed,)).fetchone()[0])
            if count:
                reasons.append(reason.format(n=count))
    for process in SupervisedRecords(state.db_path).crash_looping():
        reasons.append(
            f"supervision: {process.name} is crash-looping ({process.failures} quick exits in a"
            f" row, exit code {process.exitcode}); last error: {process.last_error or 'unknown'}"
        )
    return reasons
