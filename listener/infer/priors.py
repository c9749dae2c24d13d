"""The prior chest image CXRReportGen compares with, from the studies the gateway has received.

The prior is the frontal image of the same patient's most recent earlier study, with the draft
report the gateway made for it (LOINC 18782-3 text at its SR root), if any.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread

from converters.codes import DRAFT_REPORT
from listener.infer.tasks import PriorImage
from listener.route.defaults import FRONTAL_VIEWS
from listener.store.journal import Journal, instance_paths


@dataclass
class PriorFinder:
    """Finds a study's prior in the journal and the spool (see the module docstring)."""

    journal: Journal
    spool_dir: Path
    results_dir: Path

    def __call__(self, current: Dataset) -> PriorImage | None:
        patient_id = str(current.get("PatientID", ""))
        if not patient_id:
            return None
        current_date = str(current.get("StudyDate", ""))
        best: tuple[str, float, Path, str] | None = None  # date, received, path, study
        for info in self.journal.studies():
            if info.patient_id != patient_id or info.study_uid == current.StudyInstanceUID:
                continue
            for path in instance_paths(self.journal, self.spool_dir, info.study_uid).values():
                header = dcmread(path, stop_before_pixels=True)
                date = str(header.get("StudyDate", ""))
                if str(header.get("ViewPosition", "")).upper() not in FRONTAL_VIEWS:
                    continue
                if current_date and date and date >= current_date:
                    continue
                if best is None or (date, info.first_received_at) > best[:2]:
                    best = (date, info.first_received_at, path, info.study_uid)
                break
        if best is None:
            return None
        date, _, path, study_uid = best
        return PriorImage(dcmread(path), date or "unknown date", self.report_text(study_uid))

    def report_text(self, study_uid: str) -> str | None:
        """The draft report the gateway made for a study, from its result SRs."""
        folder = self.results_dir / study_uid
        for path in sorted(folder.glob("*.dcm")) if folder.is_dir() else []:
            sr = dcmread(path)
            if sr.Modality != "SR":
                continue
            for item in sr.get("ContentSequence", []):
                code = item.ConceptNameCodeSequence[0]
                if code.CodeValue == DRAFT_REPORT.value and "TextValue" in item:
                    return str(item.TextValue)
        return None
