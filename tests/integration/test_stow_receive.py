"""STOW-RS into ``pacs-ai serve``: curl uploads, the spool, the store response, results to Orthanc,
and the read-only QIDO-RS view."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from factory import ct_series, write_series
from peers import nodelay_env, run_gateway, run_orthanc
from pydicom import dcmread
from webpeers import (
    CANNOT_UNDERSTAND,
    FAILED_SOP_SEQUENCE,
    FAILURE_REASON,
    REFERENCED_SOP_INSTANCE,
    REFERENCED_SOP_SEQUENCE,
    chest_cr,
    curl_stow,
    dataset_bytes,
    dimse_destination,
    multipart_body,
    series_modalities,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "rules.yaml"

pytestmark = pytest.mark.integration


def test_stow_cr_and_ct_stored_byte_identical_processed_and_sent(tmp_path: Path) -> None:
    """A chest CR and a 50-slice CT uploaded in one STOW-RS request with a non-DICOM part: the
    response is 202 with the non-DICOM part failed (Cannot Understand, reason in the Warning
    header) and 51 stored; the spool holds the uploaded data sets byte for byte; the CR's report
    and the CT's SEG reach Orthanc; QIDO-RS lists the study with its result series."""
    cr = chest_cr()
    ct = write_series(ct_series(50, body_part="CHEST"), tmp_path / "ct")
    body = multipart_body(
        tmp_path / "body.bin",
        [
            ("application/dicom", cr),
            ("application/dicom", b"this is not a DICOM file, only some text" * 10),
            *(("application/dicom", path) for path in ct),
        ],
    )
    with run_orthanc(tmp_path / "orthanc") as pacs:
        env = {"PACSAI_RULES_FILE": str(RULES), **dimse_destination("pacs", pacs)}
        with run_gateway(tmp_path / "var", "--quiet-period", "1", env=env) as gateway:
            url = f"{gateway.admin_url}/dicomweb/studies"
            code, headers, answer = curl_stow(url, body)
            assert code == 202
            assert headers["content-type"].startswith("application/dicom+json")
            (failed,) = answer[FAILED_SOP_SEQUENCE]["Value"]
            assert failed[FAILURE_REASON]["Value"] == [CANNOT_UNDERSTAND]
            assert "not a DICOM PS3.10 file" in headers["warning"]
            stored = {
                item[REFERENCED_SOP_INSTANCE]["Value"][0]
                for item in answer[REFERENCED_SOP_SEQUENCE]["Value"]
            }
            sent = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in [cr, *ct]}
            assert stored == set(sent)
            spool = {p.stem: p for p in (gateway.data_dir / "spool").glob("*/*/*.dcm")}
            for uid, source in sent.items():
                assert dataset_bytes(spool[uid]) == dataset_bytes(source), source.name
            cr_uid = str(dcmread(cr, stop_before_pixels=True).StudyInstanceUID)
            ct_uid = str(dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
            wait_for(
                "CR report in Orthanc",
                lambda: (
                    "PR" in series_modalities(pacs, cr_uid)
                    and series_modalities(pacs, cr_uid).count("SR") == 2
                ),
            )
            wait_for("CT SEG in Orthanc", lambda: "SEG" in series_modalities(pacs, ct_uid))
            qido = httpx.get(f"{url}?StudyInstanceUID={ct_uid}", timeout=30)
            assert qido.status_code == 200
            (study,) = qido.json()
            assert study["00080061"]["Value"] == ["CT", "SEG", "SR"]  # Modalities in Study
            series = httpx.get(f"{url}/{ct_uid}/series?Modality=SEG", timeout=30).json()
            assert len(series) == 1


def test_stow_to_a_study_refuses_other_studies_and_answers_409_when_nothing_stored(
    tmp_path: Path,
) -> None:
    """``POST /dicomweb/studies/{study}`` with an instance of another study stores nothing:
    409 with the instance in the Failed SOP Sequence (Data Set does not match SOP Class)."""
    ct = write_series(ct_series(2), tmp_path / "ct")
    body = multipart_body(tmp_path / "body.bin", [("application/dicom", p) for p in ct])
    with run_gateway(tmp_path / "var") as gateway:
        url = f"{gateway.admin_url}/dicomweb/studies/1.2.3.4"
        code, _, answer = curl_stow(url, body)
        assert code == 409
        failed = answer[FAILED_SOP_SEQUENCE]["Value"]
        reasons = [item[FAILURE_REASON]["Value"][0] for item in failed]
        assert reasons == [0xA900, 0xA900]
        assert not list((gateway.data_dir / "spool").glob("*/*/*.dcm"))


def test_stow_needs_the_admin_token_and_multipart_related(tmp_path: Path) -> None:
    """The admin token guards STOW-RS like the API; a non-multipart body gets 415."""
    ct = write_series(ct_series(1), tmp_path / "ct")
    body = multipart_body(tmp_path / "body.bin", [("application/dicom", ct[0])])
    env = {"PACSAI_ADMIN_TOKEN": "s3cret-token"}
    with run_gateway(tmp_path / "var", env=env) as gateway:
        url = f"{gateway.admin_url}/dicomweb/studies"
        code, _, _ = curl_stow(url, body)
        assert code == 401
        code, _, answer = curl_stow(url, body, "-H", "Authorization: Bearer s3cret-token")
        assert code == 200
        assert len(answer[REFERENCED_SOP_SEQUENCE]["Value"]) == 1
        wrong = httpx.post(
            url,
            content=ct[0].read_bytes(),
            headers={"Content-Type": "application/dicom", "Authorization": "Bearer s3cret-token"},
        )
        assert wrong.status_code == 415


def test_cli_send_reaches_the_gateway_by_stow_rs_and_by_c_store(tmp_path: Path) -> None:
    """``pacs-ai send --dicomweb URL`` stores through STOW-RS, ``pacs-ai send HOST PORT`` through
    C-STORE; both land in the spool."""
    ct = write_series(ct_series(5), tmp_path / "ct")
    cli = [sys.executable, "-m", "listener.cli", "send"]
    with run_gateway(tmp_path / "var") as gateway:
        web = subprocess.run(
            [*cli, "--dicomweb", f"{gateway.admin_url}/dicomweb", *map(str, ct[:3])],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert web.returncode == 0, web.stderr
        assert "sent 3, failed 0" in web.stdout
        dimse = subprocess.run(
            [*cli, "127.0.0.1", str(gateway.port), *map(str, ct[3:]), "--no-progress"],
            capture_output=True,
            text=True,
            timeout=120,
            env=nodelay_env(),
        )
        assert dimse.returncode == 0, dimse.stderr
        spooled = {p.stem for p in (gateway.data_dir / "spool").glob("*/*/*.dcm")}
    assert spooled == {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in ct}
