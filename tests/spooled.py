"""Instances put in a pipeline's spool and journal as the receiver would, for tests that start
after receive."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pydicom import Dataset

from listener.pipeline import Pipeline
from listener.route.plan import PlannedTask, task_payload
from listener.store.jobs import JobStore
from listener.store.journal import InstanceRecord


def store_study(pipeline: Pipeline, datasets: list[Dataset], at: float) -> None:
    """Write each data set under the spool and record it in the journal, received at ``at``."""
    for ds in datasets:
        relative = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        path = pipeline.settings.spool_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        pipeline.journal.record_instance(
            InstanceRecord(
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                study_uid=str(ds.StudyInstanceUID),
                series_uid=str(ds.SeriesInstanceUID),
                modality=str(ds.Modality),
                transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                path=relative,
                size=path.stat().st_size,
                received_at=at,
                generation=0,
            ),
            quiet_period_s=pipeline.settings.quiet_period_s,
            patient_id=str(ds.get("PatientID", "")),
        )


def schedule_classification(
    pipeline: Pipeline,
    study_uid: str,
    image_uids: Sequence[str],
    *,
    labels: tuple[str, ...] = ("a", "b"),
    rule: str = "r",
) -> int:
    """Schedule one MedImageInsight classification job of rule ``rule`` over the images
    ``image_uids`` of study ``study_uid``, due now; return its id."""
    task = PlannedTask(
        rule=rule,
        name="classify",
        model="medimageinsight",
        inputs={"images": tuple(image_uids)},
        labels=labels,
    )
    return pipeline.jobs.schedule(
        job_key=f"{study_uid}:0:{rule}:classify",
        study_uid=study_uid,
        generation=0,
        rule=rule,
        task="classify",
        payload=task_payload(task),
        priority=0,
        now=time.time(),
    )


def schedule_job(
    jobs: JobStore, key: str, *, priority: int = 0, now: float = 0.0, max_attempts: int = 5
) -> int:
    """Schedule a CXRReportGen job ``key`` (its job key and task name) of study ``1.2.3``;
    return its id (the same one when it exists)."""
    return jobs.schedule(
        job_key=key,
        study_uid="1.2.3",
        generation=0,
        rule="r",
        task=key,
        payload={"model": "cxrreportgen"},
        priority=priority,
        now=now,
        max_attempts=max_attempts,
    )
