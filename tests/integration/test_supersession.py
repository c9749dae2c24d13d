"""A follow-up through ``pacs-ai serve`` into Orthanc: new results, and a rejection note (IOCM).

A CT study is sent with storescu and gets its SEG and SR; two more slices of the same series
arrive later (a follow-up generation). The follow-up's results have new UIDs, their SR names the
earlier SR in its Predecessor Documents Sequence, and a Key Object Selection rejection note
(113001 "Rejected for Quality Reasons") references the earlier SEG and SR. Orthanc in its default
configuration (no IOCM) keeps both generations and the note side by side.
"""

from __future__ import annotations

import subprocess
from io import BytesIO
from pathlib import Path

import pytest
from factory import ct_series, write_series
from peers import Gateway, Orthanc, nodelay_env, run_gateway, wait_for
from pydicom import Dataset, dcmread

pytestmark = pytest.mark.integration


def _storescu(gateway: Gateway, paths: list[Path]) -> None:
    command = ["storescu", "-aet", "MODALITY", "-aec", "PACSAI", "127.0.0.1", str(gateway.port)]
    subprocess.run([*command, *map(str, paths)], check=True, env=nodelay_env(), timeout=120)


def _results(orthanc: Orthanc, study_uid: str) -> dict[str, list[Dataset]]:
    """Every instance Orthanc holds for the study, by modality."""
    found: dict[str, list[Dataset]] = {}
    for series in orthanc.find("Series", {"StudyInstanceUID": study_uid}):
        for instance in series["Instances"]:
            data = orthanc.client.get(f"/instances/{instance}/file").content
            ds = dcmread(BytesIO(data))
            found.setdefault(str(ds.Modality), []).append(ds)
    return found


def _counts(orthanc: Orthanc, study_uid: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for series in orthanc.find("Series", {"StudyInstanceUID": study_uid}):
        modality = series["MainDicomTags"].get("Modality", "")
        counts[modality] = counts.get(modality, 0) + len(series["Instances"])
    return counts


def _referenced(ds: Dataset, sequence: str) -> set[str]:
    return {
        str(sop.ReferencedSOPInstanceUID)
        for study in ds.get(sequence, [])
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


def test_follow_up_supersedes_the_earlier_results_in_orthanc(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    """Orthanc ends with two SEGs, two SRs and one KO; the KO rejects the first SEG and SR,
    the second SR lists the first as predecessor, and no UID is shared between generations."""
    series = ct_series(6, body_part="ABDOMEN")
    files = write_series(series, tmp_path / "ct")
    study_uid = str(series[0].StudyInstanceUID)
    prefix = "PACSAI_DESTINATIONS__PACS__"
    env = {
        f"{prefix}AE_TITLE": orthanc.aet,
        f"{prefix}HOST": "127.0.0.1",
        f"{prefix}PORT": str(orthanc.dicom_port),
    }
    with run_gateway(tmp_path / "var", "--quiet-period", "1", env=env) as gateway:
        _storescu(gateway, files[:4])
        wait_for("first results", lambda: _counts(orthanc, study_uid) == {"SEG": 1, "SR": 1})
        first = _results(orthanc, study_uid)
        _storescu(gateway, files[4:])
        wait_for(
            "follow-up results and the rejection note",
            lambda: _counts(orthanc, study_uid) == {"SEG": 2, "SR": 2, "KO": 1},
        )
    held = _results(orthanc, study_uid)
    old = {str(ds.SOPInstanceUID) for modality in ("SEG", "SR") for ds in first[modality]}
    new_seg = next(ds for ds in held["SEG"] if str(ds.SOPInstanceUID) not in old)
    new_sr = next(ds for ds in held["SR"] if str(ds.SOPInstanceUID) not in old)
    (note,) = held["KO"]
    assert note.ConceptNameCodeSequence[0].CodeValue == "113001"
    assert _referenced(note, "CurrentRequestedProcedureEvidenceSequence") == old
    assert _referenced(new_sr, "PredecessorDocumentsSequence") == {
        str(first["SR"][0].SOPInstanceUID)
    }
    assert len(new_seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 6
    new_series = {str(ds.SeriesInstanceUID) for ds in (new_seg, new_sr, note)}
    old_series = {str(ds.SeriesInstanceUID) for m in ("SEG", "SR") for ds in first[m]}
    assert not new_series & old_series
