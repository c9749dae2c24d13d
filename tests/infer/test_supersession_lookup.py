"""Which earlier results a follow-up's job supersedes: the job table and the provenance filter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import factory

from converters.model_outputs import ModelIdentity
from converters.provenance import ResultKind, ResultRef
from listener.infer.tasks import TaskContext, _provenance
from listener.route.plan import PlannedTask
from listener.store.jobs import JobStore, Lease

STUDY = "1.2.3"


def _job(store: JobStore, generation: int, task: str = "segment") -> int:
    """Schedule the task's job for ``generation`` of the study; its id."""
    return store.schedule(
        job_key=f"{STUDY}:{generation}:rule:{task}",
        study_uid=STUDY,
        generation=generation,
        rule="rule",
        task=task,
        payload={},
        priority=0,
        now=float(generation),
    )


def _lease(store: JobStore, job_id: int) -> Lease:
    """Claim due jobs until ``job_id`` is claimed and return its lease (the others stay claimed:
    in progress, not completed, so they are nobody's earlier outputs)."""
    while (job := store.claim("runner", 10.0, 60.0)) is not None:
        if job.id == job_id and job.lease is not None:
            return job.lease
    raise AssertionError(f"job {job_id} was not due")


def test_earlier_outputs_are_the_previous_completed_generation(tmp_path: Path) -> None:
    """The newest generation's job supersedes the latest completed earlier one of its task,
    nothing of other tasks, and nothing while it is the only generation."""
    store = JobStore(tmp_path / "journal.sqlite")
    first = _job(store, 0)
    assert store.earlier_outputs(STUDY, "rule", "segment") == []
    store.complete(_lease(store, first), ["1.1", "1.2"], 1.0)
    assert store.earlier_outputs(STUDY, "rule", "segment") == []  # generation 0 is the newest
    _job(store, 1)
    other = _job(store, 1, task="classify")
    store.complete(_lease(store, other), ["9.9"], 2.0)
    assert store.earlier_outputs(STUDY, "rule", "segment") == ["1.1", "1.2"]
    failed = _job(store, 2)
    store.fail(_lease(store, failed), "model down", 3.0, retry_at=None)
    _job(store, 3)
    assert store.earlier_outputs(STUDY, "rule", "segment") == ["1.1", "1.2"]


def _context(earlier: list[ResultRef]) -> TaskContext:
    clients: Any = None  # no model is called
    return TaskContext(clients=clients, load=lambda uid: None, earlier=lambda task: earlier)  # type: ignore[arg-type, return-value]


def test_results_of_the_same_inputs_are_not_superseded() -> None:
    """An earlier result in a series the new results will have (same task, model and sources)
    is being made again, not replaced; one from other sources is superseded."""
    task = PlannedTask("rule", "segment", "medimageparse", {"default": ()}, prompts=("liver",))
    identity = ModelIdentity("medimageparse", "emulator-1", emulated=True)
    series = factory.ct_series(4)
    bare = _provenance(identity, task, _context([]), series)
    same = ResultRef(
        STUDY, bare.series_uid(series, ResultKind.SEG), "1.2.840.10008.5.1.4.1.1.66.4", "5.5"
    )
    other = ResultRef(
        STUDY, bare.series_uid(series[:3], ResultKind.SEG), "1.2.840.10008.5.1.4.1.1.66.4", "6.6"
    )
    provenance = _provenance(identity, task, _context([same, other]), series)
    assert provenance.supersedes == (other,)
