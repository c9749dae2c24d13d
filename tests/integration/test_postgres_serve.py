"""The whole loop with the journal on PostgreSQL: storescu -> `pacs-ai serve` (database_url set)
-> emulator -> Orthanc, with every journal table in the PostgreSQL database and its password in
no log line, admin answer or command output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest
from peers import Orthanc, nodelay_env, run_gateway, wait_for
from pgserver import PASSWORD, PostgresServer
from pydicom import dcmread
from pydicom.data import get_testdata_file

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "rules.yaml"

pytestmark = pytest.mark.integration


def _series_modalities(orthanc: Orthanc, study_uid: str) -> list[str]:
    studies = orthanc.find("Study", {"StudyInstanceUID": study_uid})
    if not studies:
        return []
    series = orthanc.get(f"/studies/{studies[0]['ID']}/series")
    return sorted(s["MainDicomTags"].get("Modality", "") for s in series)


def test_serve_with_the_journal_on_postgresql(
    tmp_path: Path, orthanc: Orthanc, postgres: PostgresServer
) -> None:
    """A chest CR sent to a gateway whose database_url is PostgreSQL gets its report SRs and
    GSPS in Orthanc; the instance, job and sends are rows of that database (no SQLite journal
    in the data folder); `pacs-ai jobs` reads them there; the password shows nowhere."""
    url = postgres.new_database()
    cr = tmp_path / "cr.dcm"
    source = get_testdata_file("RG1_UNCR.dcm")
    assert source is not None
    cr.write_bytes(Path(source).read_bytes())
    study_uid = str(dcmread(cr).StudyInstanceUID)
    env = {
        "PACSAI_DATABASE_URL": url.secret(),
        "PACSAI_RULES_FILE": str(RULES),
        "PACSAI_DESTINATIONS__PACS__AE_TITLE": orthanc.aet,
        "PACSAI_DESTINATIONS__PACS__HOST": "127.0.0.1",
        "PACSAI_DESTINATIONS__PACS__PORT": str(orthanc.dicom_port),
    }
    data_dir = tmp_path / "var"
    with run_gateway(data_dir, "--quiet-period", "1", env=env) as gateway:
        subprocess.run(
            ["storescu", "-aec", "PACSAI", "127.0.0.1", str(gateway.port), str(cr)],
            check=True,
            env=nodelay_env(),
            timeout=60,
        )
        wait_for(
            "CR results in Orthanc",
            lambda: (
                _series_modalities(orthanc, study_uid).count("SR") == 2
                and "PR" in _series_modalities(orthanc, study_uid)
            ),
        )
        admin = gateway.admin_url
        ready = httpx.get(f"{admin}/readyz", timeout=10)
        audit = httpx.get(f"{admin}/api/audit", timeout=10)
        jobs = subprocess.run(
            [sys.executable, "-m", "listener.cli", "jobs", "list", "--json"],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ, **env, PACSAI_DATA_DIR=str(data_dir)),
        )
    assert ready.json()["database"] == {"engine": "postgresql", "url": str(url), "reachable": True}
    listed = json.loads(jobs.stdout)["jobs"]
    assert listed and {job["state"] for job in listed} == {"COMPLETED"}
    assert not (data_dir / "journal.sqlite").exists()
    with psycopg.connect(url.secret()) as db:
        (instances,) = db.execute(
            "SELECT COUNT(*) FROM instances WHERE study_uid = %s", (study_uid,)
        ).fetchone()
        sent = db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'sent'").fetchone()
        (released,) = db.execute(
            "SELECT state FROM studies WHERE study_uid = %s", (study_uid,)
        ).fetchone()
    assert instances == 1 and released == "dispatched"
    assert sent is not None and sent[0] >= 3  # two SRs and the presentation state
    said = [gateway.log_path.read_text(), ready.text, audit.text, jobs.stdout, jobs.stderr]
    assert audit.status_code == 200 and all(PASSWORD not in text for text in said)
    assert f"postgresql://pacsai:***@127.0.0.1:{postgres.port}/" in said[0]  # start-up line
