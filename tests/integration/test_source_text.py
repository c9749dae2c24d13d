"""Source text through ``pacs-ai serve``: names in their character sets, malformed values unlogged.

The receive header walk decodes Patient's Name in the dataset's Specific Character Set, so the
journal (``pacs-ai studies --show-patient``) shows a UTF-8 or ISO 2022 name as written. Values a
source gets wrong (a birth date written 1945-12-31, a name of six components, an LO of 70
characters) fail no task and appear in no log line: pydicom's reading validation would otherwise
quote them (listener/logging.py, quiet_dicom_libraries).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from factory import ct_series, write_series
from peers import Gateway, nodelay_env, run_gateway, wait_for
from pydicom import dcmread
from pydicom.data import get_charset_files, get_testdata_file

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "listener.cli"]
BIRTH_DATE = "1945-12-31"
SIX_COMPONENTS = "Plantfam^Plantgiven^Plantmid^Plantpre^Plantsuf^Plantsix"
LONG_LO = "PLANTEDLO " + "overlong description " * 3  # 73 characters, LO holds 64
PLANTED = (BIRTH_DATE, "19451231", *SIX_COMPONENTS.split("^"), "PLANTEDLO", "overlong")


def storescu(gateway: Gateway, paths: list[Path]) -> None:
    """Send ``paths`` to the gateway with DCMTK storescu (one association)."""
    command = ["storescu", "-aet", "MODALITY", "-aec", "PACSAI", "127.0.0.1", str(gateway.port)]
    subprocess.run([*command, *map(str, paths)], check=True, env=nodelay_env(), timeout=120)


def cli(*args: str) -> str:
    """What a ``pacs-ai`` command prints."""
    run = subprocess.run([*CLI, *args], capture_output=True, text=True, check=True, timeout=60)
    return run.stdout


def studies(data_dir: Path) -> list[dict[str, Any]]:
    """``pacs-ai studies --json --show-patient``: one JSON object per line."""
    out = cli("studies", "--json", "--show-patient", "--data-dir", str(data_dir))
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def jobs(data_dir: Path) -> list[dict[str, Any]]:
    """``pacs-ai jobs list --json``: the jobs."""
    listed: list[dict[str, Any]] = json.loads(
        cli("jobs", "list", "--json", "--data-dir", str(data_dir))
    )["jobs"]
    return listed


def test_studies_show_names_in_their_character_sets(tmp_path: Path) -> None:
    """chrX1 (UTF-8) and chrH31 (ISO 2022 IR 87) through serve: the journal's names are right."""
    files = [Path(get_charset_files(name)[0]) for name in ("chrX1.dcm", "chrH31.dcm")]
    with run_gateway(tmp_path / "var", "--quiet-period", "60") as gateway:
        storescu(gateway, files)
        rows = wait_for(
            "both studies", lambda: (r := studies(gateway.data_dir)) and len(r) == 2 and r
        )
    names = {row["study_uid"]: row["patient_name"] for row in rows}
    assert names == {
        str(dcmread(files[0]).StudyInstanceUID): "Wang^XiaoDong=王^小東",
        str(dcmread(files[1]).StudyInstanceUID): "Yamada^Tarou=山田^太郎=やまだ^たろう",
    }


def _plant(paths: list[Path]) -> None:
    """Rewrite each file with the malformed values (pydicom writes them as given)."""
    for path in paths:
        ds = dcmread(path)
        ds.PatientBirthDate = BIRTH_DATE
        ds.PatientName = SIX_COMPONENTS
        ds.StudyDescription = LONG_LO
        ds.save_as(path)


@pytest.mark.filterwarnings("ignore:Invalid value")  # pydicom, while the test plants the values
def test_malformed_values_fail_no_task_and_reach_no_log_line(tmp_path: Path) -> None:
    """A CT series and a chest CR with the planted values: every task completes, every result
    passes dciodvfy, and no line of the gateway's log (debug level) contains a planted value."""
    ct = write_series(ct_series(4, body_part="ABDOMEN"), tmp_path / "ct")
    cr = tmp_path / "cr.dcm"
    source = get_testdata_file("RG1_UNCR.dcm")
    assert source is not None
    cr.write_bytes(Path(source).read_bytes())
    _plant([*ct, cr])
    env = {"PACSAI_LOG_LEVEL": "debug"}
    with run_gateway(tmp_path / "var", "--quiet-period", "1", env=env) as gateway:
        storescu(gateway, [*ct, cr])

        def finished() -> list[dict[str, Any]] | None:
            listed = jobs(gateway.data_dir)
            done = [j for j in listed if j["state"] in ("COMPLETED", "CANCELED")]
            return listed if len(listed) == 3 and len(done) == 3 else None

        ran = wait_for("the three jobs", finished)
    assert {(j["task"], j["state"]) for j in ran} == {
        ("segment", "COMPLETED"),
        ("report", "COMPLETED"),
        ("classify", "COMPLETED"),
    }, [j.get("last_error") for j in ran]
    results = sorted((gateway.data_dir / "results").glob("*/*.dcm"))
    assert len(results) >= 4  # SEG + SR, report SR (+ GSPS), classification SR
    for path in results:
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
        errors = [line for line in run.stderr.splitlines() if line.startswith("Error")]
        assert not errors, (path.name, errors)
    lines = gateway.log_path.read_text(errors="replace").splitlines()
    assert len(lines) > 20, "the gateway logged almost nothing"
    leaked = [line for line in lines if any(value in line for value in PLANTED)]
    assert not leaked, "\n".join(leaked[:5])
