"""`pacs-ai process` runs route, infer (emulator over HTTP) and convert on local files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from factory import ct_series, write_series
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

PACS_AI = str(Path(sys.executable).parent / "pacs-ai")


def _inputs(folder: Path) -> None:
    cr = get_testdata_file("RG1_UNCR.dcm")
    assert cr is not None
    folder.mkdir(parents=True)
    shutil.copy(cr, folder / "cr.dcm")
    write_series(ct_series(6, body_part="ABDOMEN"), folder / "ct")


def _run(inputs: Path, out: Path) -> list[list[str]]:
    result = subprocess.run(
        [PACS_AI, "process", str(inputs), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return [line.split("\t") for line in result.stdout.splitlines()]


@pytest.mark.integration
def test_process_builds_results_for_cr_and_ct(tmp_path: Path) -> None:
    """The default plan gives a report SR + GSPS + classification for the CR and a SEG for the CT,
    each in the source study."""
    _inputs(tmp_path / "in")
    lines = _run(tmp_path / "in", tmp_path / "out")
    kinds = {(line[1], dcmread(line[2]).Modality) for line in lines}
    assert ("chest-xray/report", "SR") in kinds
    assert ("chest-xray/report", "PR") in kinds
    assert ("chest-xray/classify", "SR") in kinds
    assert ("ct-mr-abdomen/segment", "SEG") in kinds
    for study_uid, _task, path, description in lines:
        result = dcmread(path)
        assert result.StudyInstanceUID == study_uid
        assert "(emulator)" in description and "(emulator)" in result.SeriesDescription


def _uids(path: str) -> tuple[str, str]:
    result = dcmread(path)
    return str(result.SeriesInstanceUID), str(result.SOPInstanceUID)


@pytest.mark.integration
def test_process_twice_gives_same_uids(tmp_path: Path) -> None:
    """Processing the same input twice gives the same result SOP and series UIDs."""
    _inputs(tmp_path / "in")
    first = _run(tmp_path / "in", tmp_path / "a")
    second = _run(tmp_path / "in", tmp_path / "b")
    uids_a = sorted(_uids(line[2]) for line in first)
    uids_b = sorted(_uids(line[2]) for line in second)
    assert uids_a == uids_b and len(uids_a) >= 5


@pytest.mark.integration
def test_example_rules_segment_a_thin_abdominal_ct_in_3d(tmp_path: Path) -> None:
    """With config/rules.yaml a thin-slice abdominal CT goes to MedImageParse 3D as one NIfTI
    volume; its SEG carries the rule's prompts, references every slice and passes dciodvfy."""
    series = ct_series(12, body_part="ABDOMEN")
    write_series(series, tmp_path / "in")
    rules = Path(__file__).resolve().parents[2] / "config" / "rules.yaml"
    command = [PACS_AI, "process", str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    result = subprocess.run(
        [*command, "--rules", str(rules)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert {line[1] for line in lines} == {"ct-abdomen-3d/segment3d"}
    (seg_path,) = [line[2] for line in lines if dcmread(line[2]).Modality == "SEG"]
    seg = dcmread(seg_path)
    labels = {str(s.SegmentLabel) for s in seg.SegmentSequence}
    assert labels and labels <= {"liver", "kidney", "pancreas", "spleen", "tumor"}
    referenced = {
        str(ref.ReferencedSOPInstanceUID)
        for item in seg.ReferencedSeriesSequence
        for ref in item.ReferencedInstanceSequence
    }
    assert referenced == {str(ds.SOPInstanceUID) for ds in series}
    check = subprocess.run(["dciodvfy", seg_path], capture_output=True, text=True, check=False)
    assert not [line for line in check.stderr.splitlines() if line.startswith("Error")]


@pytest.mark.integration
def test_chest_pair_sends_frontal_and_lateral_and_references_both(tmp_path: Path) -> None:
    """A PA and a lateral view of one study both go to CXRReportGen; the report SR references both
    images and its presentation state draws on the frontal one."""
    source = get_testdata_file("RG1_UNCR.dcm")
    assert source is not None
    (tmp_path / "in").mkdir()
    frontal = dcmread(source)
    lateral = dcmread(source)
    lateral.SOPInstanceUID = generate_uid()
    lateral.file_meta.MediaStorageSOPInstanceUID = lateral.SOPInstanceUID
    lateral.ViewPosition = "LL"
    frontal.save_as(tmp_path / "in" / "pa.dcm")
    lateral.save_as(tmp_path / "in" / "ll.dcm")
    lines = _run(tmp_path / "in", tmp_path / "out")
    report = [dcmread(line[2]) for line in lines if line[1] == "chest-xray/report"]
    sr = next(obj for obj in report if obj.Modality == "SR")
    pr = next(obj for obj in report if obj.Modality == "PR")
    evidence = {
        str(ref.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == {str(frontal.SOPInstanceUID), str(lateral.SOPInstanceUID)}
    drawn_on = {
        str(ref.ReferencedSOPInstanceUID)
        for series in pr.ReferencedSeriesSequence
        for ref in series.ReferencedImageSequence
    }
    assert drawn_on == {str(frontal.SOPInstanceUID)}


@pytest.mark.integration
def test_a_broken_input_fails_alone_with_its_reason(tmp_path: Path) -> None:
    """In a run of three studies, an MR whose pixel data is cut in half fails with a FAILED line
    saying why; the CR and the CT still get their results; the exit status is non-zero."""
    _inputs(tmp_path / "in")
    source = get_testdata_file("MR_small.dcm")
    assert source is not None
    broken = dcmread(source)
    broken.PixelData = broken.PixelData[: len(broken.PixelData) // 2]
    broken.save_as(tmp_path / "in" / "broken.dcm")
    result = subprocess.run(
        [PACS_AI, "process", str(tmp_path / "in"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode != 0, result.stdout
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    failed = [line for line in lines if line[2] == "-"]
    assert [line[0] for line in failed] == [str(broken.StudyInstanceUID)]
    assert "pixel data" in failed[0][3].lower(), failed[0][3]
    written = {line[0] for line in lines if line[2] != "-"}
    assert len(written) == 2 and str(broken.StudyInstanceUID) not in written
