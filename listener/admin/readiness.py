"""Readiness: is every stage moving? Reasons why not, read from the journal and the disk.

A stage is stuck when work it owns is overdue by far more than normal jitter:

- disk: the spool's free space is under ``disk_min_free_mb`` (receivers refuse new instances);
- assemble: a receiving study's quiet period ended long ago but it was not released (no assemble
  dispatcher is running);
- infer: a job is IN PROGRESS past its lease (its job runner died or hangs), or a scheduled job has
  been due for long (no job runner is running);
- send: an outbox entry has been due for long (no sender is running, or it is wedged);
- supervision: a supervised process is crash-looping (its name and last error);
- database: the journal's database does not answer (a PostgreSQL server down or unreachable);
  the body's ``database`` section names its engine and its URL, password hidden.

The processes of every host sharing the journal are listed in the ``executors`` section: each
one's role, process name and the age of its last heartbeat (:mod:`listener.store.executors`).

Models are reported apart (:func:`readiness`'s ``models`` section): a model whose circuit breaker
is open is named unavailable with the endpoint's last failure, the time of the next probe and the
jobs waiting for it. That alone does not make the gateway unready (status ``degraded``, HTTP 200):
studies are still received, stored and queued, and their jobs run when the model is back, so a
load balancer or an orchestrator must keep sending to this instance rather than take it out of
rotation (or restart it) because a remote endpoint is down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from listener.admin.state import AdminState
from listener.settings import MODEL_NAMES
from listener.store.db import DatabaseError
from listener.store.drift import DriftStore
from listener.store.executors import Executors
from listener.store.records import SupervisedRecords
from listener.store.stats import model_availability, overdue

HTTP_OK, HTTP_SERVICE_UNAVAILABLE = 200, 503


@dataclass(frozen=True)
class Thresholds:
    """How late work may be before the stage counts as stuck, in seconds."""

    release_late_s: float = 300.0
    job_due_late_s: float = 900.0
    lease_late_s: float = 60.0
    send_late_s: float = 900.0


def database(state: AdminState) -> tuple[dict[str, Any], str | None]:
    """The ``database`` section (engine, URL without its password, whether it answers) and the
    reason the gateway is not ready because of it (None: it answers)."""
    url = state.journal.db.url
    reason: str | None = None
    try:
        state.journal.db.ping()
    except DatabaseError as exc:
        reason = f"database: {exc}"
    return {"engine": str(url.engine), "url": str(url), "reachable": reason is None}, reason


def problems(state: AdminState, now: float, limits: Thresholds | None = None) -> list[str]:
    """Every reason the gateway is not ready; empty when it is."""
    limits = limits or Thresholds()
    reasons = []
    _, unreachable = database(state)
    if unreachable is not None:
        return [unreachable]  # nothing else can be read from it
    free = state.spool.free_mb()
    if free < state.settings.disk_min_free_mb:
        reasons.append(
            f"disk: {free:.0f} MiB free on the spool, under disk_min_free_mb"
            f" ({state.settings.disk_min_free_mb} MiB)"
        )
    late = overdue(
        state.journal.db,
        release_before=now - limits.release_late_s,
        lease_before=now - limits.lease_late_s,
        job_before=now - limits.job_due_late_s,
        send_before=now - limits.send_late_s,
    )
    for count, reason in (
        (late.unreleased_studies, "assemble: {n} studies past their quiet period are not released"),
        (late.expired_leases, "infer: {n} jobs IN PROGRESS past their lease"),
        (
            late.overdue_jobs,
            f"infer: {{n}} scheduled jobs overdue by over {limits.job_due_late_s:.0f} s",
        ),
        (
            late.overdue_sends,
            f"send: {{n}} outbox entries overdue by over {limits.send_late_s:.0f} s",
        ),
    ):
        if count:
            reasons.append(reason.format(n=count))
    supervised = SupervisedRecords(state.db_path)
    try:
        looping = supervised.crash_looping()
    finally:
        supervised.close()
    for process in looping:
        reasons.append(
            f"supervision: {process.name} is crash-looping ({process.failures} quick exits in a"
            f" row, exit code {process.exitcode}); last error: {process.last_error or 'unknown'}"
        )
    return reasons


def models(state: AdminState) -> dict[str, dict[str, Any]]:
    """Each model's availability as the job runners last saw it (the ``models`` section)."""
    return {
        m.model: {
            "available": m.available,
            "reason": m.reason,
            "since": m.since,
            "next_probe_at": m.next_probe_at,
            "waiting_jobs": m.waiting_jobs,
        }
        for m in model_availability(state.journal.db, MODEL_NAMES)
    }


def readiness(state: AdminState, now: float) -> tuple[int, dict[str, Any]]:
    """The /readyz answer: HTTP status and body (``status``, ``reasons``, ``models``)."""
    reasons = problems(state, now)
    about_db, _ = database(state)
    if not about_db["reachable"]:
        code = HTTP_SERVICE_UNAVAILABLE
        return code, {"status": "not ready", "reasons": reasons, "database": about_db}
    by_model = models(state)
    if reasons:
        status = "not ready"
    elif any(not m["available"] for m in by_model.values()):
        status = "degraded"
    else:
        status = "ready"
    code = HTTP_SERVICE_UNAVAILABLE if reasons else HTTP_OK
    body = {"status": status, "reasons": reasons, "models": by_model, "database": about_db}
    return code, body | {"warnings": warnings(state), "executors": executors(state, now)}


def executors(state: AdminState, now: float) -> list[dict[str, Any]]:
    """The processes with a heartbeat on the journal, on every host (the ``executors`` section):
    lease owner name, executor id, process, role and seconds since the last heartbeat."""
    table = Executors(state.db_path)
    try:
        beats = table.all()
    finally:
        table.close()
    return [
        {
            "owner": b.owner,
            "executor_id": b.executor_id,
            "process": b.process,
            "role": b.role,
            "heartbeat_age_s": round(now - b.heartbeat_at, 1),
        }
        for b in beats
    ]


def warnings(state: AdminState) -> list[str]:
    """What an operator should look at without the gateway being unready: groups whose
    embeddings drifted from their reference (listener.store.drift)."""
    drift = DriftStore(state.db_path, state.settings.drift)
    try:
        latest = drift.latest()
    finally:
        drift.close()
    return [
        f"drift: group {group} drifted from its reference (MMD² {r.statistic:.4f},"
        f" p {r.p_value:.4f} < {state.settings.drift.alpha})"
        for group, r in latest.items()
        if r.drifted
    ]
