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
