"""The admin API's answers as plain JSON-ready data, read from the journal and the files.

Patient ID and name appear only when the caller asks (``show_patient``): the dashboard and the
API are for operators, and PHI stays off by default.
"""

from __future__ import annotations

import json
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from listener.admin.state import AdminState
from listener.store.embeddings import EmbeddingStore
from listener.store.jobs import Job, JobState
from listener.store.journal import StudyInfo, StudyState
from listener.store.outbox import EntryState, OutboxEntry
from listener.store.vector_index import SimilarFilter

Json = dict[str, Any]
_ACTIVE_JOBS = (JobState.SCHEDULED, JobState.IN_PROGRESS)


def study_json(info: StudyInfo, *, show_patient: bool = False) -> Json:
    """A study's journal row (patient fields only when asked for)."""
    data: Json = {
        "study_uid": info.study_uid,
        "state": info.state.value,
        "generation": info.generation,
        "instances": info.instance_count,
        "series": info.series_count,
        "first_received_at": info.first_received_at,
        "last_received_at": info.last_received_at,
        "due_at": info.due_at,
        "released_at": info.released_at,
        "calling_ae": info.calling_ae,
        "called_ae": info.called_ae,
    }
    if show_patient:
        data["patient_id"] = info.patient_id
        data["patient_name"] = info.patient_name
    return data


def job_json(job: Job) -> Json:
    """A job row without its payload's instance lists (they can be long)."""
    return {
        "id": job.id,
        "study_uid": job.study_uid,
        "generation": job.generation,
        "rule": job.rule,
        "task": job.task,
        "model": job.payload.get("model"),
        "state": job.state.value,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "last_error": job.last_error,
        "waiting_for": job.waiting_for,
        "retry_of": job.retry_of,
        "outputs": job.outputs,
        "not_before": job.not_before,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
    }


def job_detail(state: AdminState, job: Job) -> Json:
    """A job with its timeline (UPS state changes, PS3.4 CC.1.1) and its outbox entries."""
    data = job_json(job)
    data["events"] = [
        {"at": at, "state": name, "detail": detail}
        for at, name, detail in state.jobs.events(job.id)
    ]
    data["sends"] = [_entry_json(e) for e in state.outbox.entries(job_id=job.id)]
    return data


def _entry_json(entry: OutboxEntry) -> Json:
    return {
        "id": entry.id,
        "destination": entry.destination,
        "job_id": entry.job_id,
        "sop_instance_uid": entry.sop_instance_uid,
        "state": entry.state.value,
        "attempts": entry.attempts,
        "next_attempt_at": entry.next_attempt_at,
        "last_error": entry.last_error,
        "enqueued_at": entry.enqueued_at,
        "sent_at": entry.sent_at,
    }


def outbox_counts(state: AdminState) -> dict[str, int]:
    """Outbox entries per state, all destinations together."""
    return state.outbox.counts()


def study_sends(state: AdminState, study_uid: str) -> list[Json]:
    """Outbox entries of a study: its results (``results/<study>/``) and forwarded originals."""
    return [_entry_json(e) for e in state.outbox.entries_of_study(study_uid)]


def result_files(state: AdminState, study_uid: str) -> list[Json]:
    """The result objects written for a study: SOP Instance UID, modality, series description."""
    folder = state.results_dir / study_uid
    out = []
    for path in sorted(folder.glob("*.dcm")) if folder.is_dir() else []:
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError) as exc:
            out.append({"file": path.name, "error": str(exc)})
            continue
        out.append(
            {
                "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
                "modality": str(ds.get("Modality", "")),
                "series_description": str(ds.get("SeriesDescription", "")),
            }
        )
    return out


def study_stage(info: StudyInfo, jobs: list[Job], sends: list[Json]) -> str:
    """Where a study is in the flow: receiving, ready, processing, sending, failed or done."""
    if info.state is not StudyState.DISPATCHED:
        return info.state.value
    if any(job.state in _ACTIVE_JOBS for job in jobs):
        return "processing"
    if any(entry["state"] == EntryState.PENDING for entry in sends):
        return "sending"
    retried = {job.retry_of for job in jobs}  # a canceled job an operator retried is superseded
    failed = any(job.state is JobState.CANCELED and job.id not in retried for job in jobs)
    if failed or any(entry["state"] == EntryState.DEAD for entry in sends):
        return "failed"
    return "done"


def study_summary(state: AdminState, info: StudyInfo, *, show_patient: bool = False) -> Json:
    """A study row with its stage and counts of jobs, results and sends."""
    jobs = state.jobs.list_jobs(study_uid=info.study_uid)
    sends = study_sends(state, info.study_uid)
    data = study_json(info, show_patient=show_patient)
    data["stage"] = study_stage(info, jobs, sends)
    data["jobs"] = _count(job.state.value for job in jobs)
    data["sends"] = _count(str(entry["state"]) for entry in sends)
    folder = state.results_dir / info.study_uid
    data["results"] = len(list(folder.glob("*.dcm"))) if folder.is_dir() else 0
    data |= study_flags(state, info.study_uid)
    return data


def study_flags(state: AdminState, study_uid: str) -> Json:
    """The study's review/OOD flags and its latest OOD score (listener.store.flags)."""
    if state.flags is None:
        return {"flags": [], "ood_score": None}
    return {
        "flags": [
            {
                "kind": f.kind,
                "rule": f.rule,
                "task": f.task,
                "reason": f.reason,
                "score": f.score,
                "destination": f.destination,
                "at": f.created_at,
            }
            for f in state.flags.flags(study_uid)
        ],
        "ood_score": state.flags.ood(study_uid),
    }


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def study_timeline(state: AdminState, info: StudyInfo, *, show_patient: bool = False) -> Json:
    """A study's story: received, released, each job with its events, results and sends."""
    jobs = state.jobs.list_jobs(study_uid=info.study_uid)
    sends = study_sends(state, info.study_uid)
    data = study_json(info, show_patient=show_patient)
    data["stage"] = study_stage(info, jobs, sends)
    events: list[Json] = [
        {"at": info.first_received_at, "event": "first_instance_received"},
        {"at": info.last_received_at, "event": "last_instance_received"},
    ]
    if info.released_at is not None:
        events.append({"at": info.released_at, "event": "released"})
    for job in jobs:
        for at, name, detail in state.jobs.events(job.id):
            events.append(
                {
                    "at": at,
                    "event": f"job_{name.lower().replace(' ', '_')}",
                    "job_id": job.id,
                    "task": f"{job.rule}/{job.task}",
                    "detail": detail,
                }
            )
    for entry in sends:
        if entry["sent_at"] is not None:
            events.append(
                {
                    "at": entry["sent_at"],
                    "event": EntryState.SENT.value,
                    "destination": entry["destination"],
                    "sop_instance_uid": entry["sop_instance_uid"],
                }
            )
    data["timeline"] = sorted(events, key=lambda event: float(event["at"]))
    data["jobs"] = [job_detail(state, job) for job in reversed(jobs)]
    data["results"] = result_files(state, info.study_uid)
    data["sends"] = sends
    data |= study_flags(state, info.study_uid)
    data["similar"] = similar_studies(state, info.study_uid)
    return data


def similar_studies(
    state: AdminState, study_uid: str, top: int = 5, where: SimilarFilter | None = None
) -> list[Json]:
    """The other studies most like this one, best first, one row per study (its most similar
    instance), from the similarity index (listener.store.vector_index) with the same filters as
    ``pacs-ai similar``; the query is the study's first embedded instance. Empty when the study
    has no embedding."""
    store = EmbeddingStore(state.db_path)
    try:
        first = store.first_instance(study_uid)
        own = store.instance_count(study_uid)
    finally:
        store.close()
    if first is None:
        return []
    found = state.similar(first, top * 4 + own, where)
    rows: dict[str, Json] = {}
    for n in found:
        if n.study_uid == study_uid or n.study_uid in rows:
            continue
        rows[n.study_uid] = {
            "study_uid": n.study_uid,
            "sop_instance_uid": n.sop_instance_uid,
            "similarity": n.similarity,
            "modality": n.modality,
            "received_at": n.received_at,
        }
    return list(rows.values())[:top]


def stage_counts(state: AdminState) -> dict[str, int]:
    """How many studies are at each stage of the flow."""
    counts = {"receiving": 0, "ready": 0, "processing": 0, "sending": 0, "failed": 0, "done": 0}
    for info in state.journal.studies():
        jobs = state.jobs.list_jobs(study_uid=info.study_uid)
        stage = study_stage(info, jobs, study_sends(state, info.study_uid))
        counts[stage] = counts.get(stage, 0) + 1
    return counts


def failures(state: AdminState, limit: int = 50) -> list[Json]:
    """Recent failures with their reasons: canceled jobs, dead letters, quarantined instances."""
    out: list[Json] = [
        {
            "kind": "job",
            "at": job.updated_at,
            "study_uid": job.study_uid,
            "job_id": job.id,
            "what": f"{job.rule}/{job.task}",
            "reason": job.last_error or "",
        }
        for job in state.jobs.list_jobs(state=JobState.CANCELED)[:limit]
    ]
    out += [
        {
            "kind": "job",
            "at": job.updated_at,
            "study_uid": job.study_uid,
            "job_id": job.id,
            "what": f"{job.rule}/{job.task} waiting for {job.waiting_for}",
            "reason": job.last_error or "",
        }
        for job in state.jobs.list_jobs(state=JobState.IN_PROGRESS)[:limit]
        if job.waiting_for is not None and job.lease_owner is None
    ]
    for entry in map(_entry_json, state.outbox.dead_letters()[-limit:]):
        out.append(
            {
                "kind": "send",
                "at": entry["next_attempt_at"],
                "job_id": entry["job_id"],
                "what": entry["destination"],
                "reason": entry["last_error"] or "",
            }
        )
    reasons = sorted(state.spool.quarantine_dir.glob("*.json"))[-limit:]
    for path in reasons:
        try:
            reason = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        out.append(
            {
                "kind": "quarantine",
                "at": path.stat().st_mtime,
                "what": path.stem,
                "reason": str(reason.get("reason", "")),
            }
        )
    return sorted(out, key=lambda item: float(item["at"] or 0), reverse=True)[:limit]
