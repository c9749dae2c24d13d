"""Instances put in a pipeline's spool and journal as the receiver would, for tests that start
after receive."""

from __future__ import annotations

import time

from pydicom import Dataset

from listener.pipeline import Pipeline
from listener.route.plan import PlannedTask, task_payload
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


def schedule_classification(pipeline: Pipeline, series: list[Dataset]) -> int:
    """Schedule one MedImageInsight classification job (labels ``a``, ``b``) over ``series``,
    due now; return its id."""
    task = PlannedTask(
        rule="r",
        name="classify",
        model="medimageinsight",
        inputs={"images": tuple(str(ds.SOPInstanceUID) for ds in series)},
        labels=("a", "b"),
    )
    return pipeline.jobs.schedule(
        job_key="k",
        study_uid=str(series[0].StudyInstanceUID),
        generation=0,
        rule="r",
        task="classify",
        payload=task_payload(task),
        priority=0,
        now=time.time(),
    )
