"""``pacs-ai rules check`` and ``pacs-ai rules test`` through the real command-line entry point."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from factory import ct_series, write_series
from pydicom.data import get_testdata_file

from listener.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def study_folder(tmp_path: Path) -> Path:
    """A folder with a chest CR, a 6-slice CT series and a file that is not DICOM."""
    folder = tmp_path / "in"
    write_series(ct_series(6), folder / "ct")
    chest = get_testdata_file("RG1_UNCR.dcm")
    assert chest is not None
    shutil.copy(chest, folder / "chest.dcm")
    (folder / "README.txt").write_text("not DICOM")
    return folder


def test_rules_test_prints_the_plan(study_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rules test groups the files by study and prints each study's rules, tasks and forwards."""
    rules = ROOT / "config" / "rules.yaml"
    code = main(
        ["rules", "test", str(study_folder), "--rules", str(rules), "--calling-ae", "CT_SCANNER1"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "skipped 1 files" in out
    chest, ct = out.split("\n\n")[1:]
    assert "1 instances (CR)" in chest
    assert "task chest-xray/report: cxrreportgen (frontal 1, lateral 0) -> pacs" in chest
    assert "6 instances (CT)" in ct
    assert "matched rules: forward-ct-to-archive" in ct
    assert "forward 6 instances to archive (ARCHIVE@127.0.0.1:11113)" in ct
    assert "SYNTHETIC" not in out  # no patient names


def test_rules_test_with_default_rules(
    study_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --rules the embedded defaults decide, and no forwarding happens."""
    assert main(["rules", "test", str(study_folder / "ct")]) == 0
    out = capsys.readouterr().out
    assert "embedded default rules" in out
    assert "medimageparse" in out and "forward" not in out


def test_rules_test_without_dicom(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder without DICOM files is exit status 1."""
    assert main(["rules", "test", str(tmp_path)]) == 1
    assert "no DICOM instances found" in capsys.readouterr().out


def test_rules_check_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    """Rules check on config/rules.yaml exits 0."""
    assert main(["rules", "check", str(ROOT / "config" / "rules.yaml")]) == 0
    assert "valid: " in capsys.readouterr().out


def test_rules_check_bad_file_exits_2(tmp_path: Path) -> None:
    """The console command exits 2 with a message naming the rule and the field."""
    text = (ROOT / "config" / "rules.yaml").read_text()
    bad = tmp_path / "rules.yaml"
    bad.write_text(text.replace('regex: "^ZZTEST"', 'regex: "^(ZZTEST"'))
    run = subprocess.run(
        [sys.executable, "-m", "listener.cli", "rules", "check", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode == 2
    assert (
        "rule 'discard-test-patients' field match.regex: invalid regular expression" in run.stderr
    )
