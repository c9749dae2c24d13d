"""Instances put in a pipeline's spool and journal as the receiver would, for tests that start
after receive."""

from __future__ import annotations

from pydicom import Dataset

from listener.pipeline import Pipeline
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
