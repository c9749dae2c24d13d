"""CXRReportGen's prior from the PACS: Orthanc holds the patient's earlier chest CR and a
radiologist's report; the current CR comes by C-STORE; the request the model receives carries the
prior image and the report text (C-FIND + C-GET, and QIDO-RS + WADO-RS). An unreachable PACS
delays the job by the timeout, and the report SR says no prior was available."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from peers import Orthanc, free_port, nodelay_env, run_gateway, run_orthanc
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from webpeers import chest_cr, dimse_destination, wait_for

from converters.cxr import NO_PRIOR_STATEMENT
from listener.asgi import BackgroundServer
from listener.emulator.app import create_app
from listener.settings import EmulatorSettings

pytestmark = pytest.mark.integration

PATIENT = "PRIOR-TEST-1"
RADIOLOGIST_TEXT = "Mild cardiomegaly. No pleural effusion. Sternotomy wires."
RULES = """
destinations:
  pacs: {ae_title: ORTHANC, host: 127.0.0.1, port: 104}   # the settings give the real port
rules:
  - name: chest-report
    match: {attribute: Modality, one_of: [CR, DX]}
    tasks:
      - name: report
        model: cxrreportgen
    results_to: [pacs]
"""


class Recorder:
    """An ASGI wrapper that keeps the body of every CXRReportGen request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/cxrreportgen"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        self.bodies.append(json.loads(body))
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def rows(self) -> list[dict[str, Any]]:
        """Each request's first row, as column -> value."""
        out = []
        for body in self.bodies:
            data = body["input_data"]
            out.append(dict(zip(data["columns"], data["data"][0], strict=True)))
        return out


@contextmanager
def recording_emulator() -> Iterator[tuple[str, Recorder]]:
    """The emulator behind a recorder, on a loopback port: (CXRReportGen endpoint, recorder)."""
    recorder = Recorder(create_app(EmulatorSettings()))
    server = BackgroundServer(recorder)
    url = server.start()
    try:
        yield f"{url}/cxrreportgen/score", recorder
    finally:
        server.stop()


def _copy_cr(folder: Path, study_date: str, name: str) -> Path:
    """The chest CR as a new study of PATIENT on ``study_date``."""
    ds = dcmread(chest_cr())
    ds.PatientID, ds.StudyDate = PATIENT, study_date
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _radiologist_sr(prior: Dataset, path: Path) -> Path:
    """A Basic Text SR report of the prior study, as a RIS would store it."""
    sr = Dataset()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR Storage
    sr.SOPInstanceUID = generate_uid()
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyTime"):
        setattr(sr, keyword, prior.get(keyword, ""))
    sr.SeriesInstanceUID, sr.Modality, sr.Manufacturer = generate_uid(), "SR", "Hospital RIS"
    sr.ValueType, sr.ContinuityOfContent = "CONTAINER", "SEPARATE"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator = "18748-4", "LN"
    title.CodeMeaning = "Diagnostic imaging report"
    sr.ConceptNameCodeSequence = [title]
    findings = Dataset()
    findings.RelationshipType, findings.ValueType = "CONTAINS", "TEXT"
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121071", "DCM", "Finding"
    findings.ConceptNameCodeSequence = [name]
    findings.TextValue = RADIOLOGIST_TEXT
    sr.ContentSequence = [findings]
    sr.save_as(path, enforce_file_format=True)
    return path


def _orthanc_config(web: bool) -> dict[str, Any]:
    config: dict[str, Any] = {"DicomModalities": {"pacsai": ["PACSAI", "127.0.0.1", 104]}}
    if web:
        config["Plugins"] = ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"]
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
    return config


def _store_prior(orthanc: Orthanc, tmp_path: Path) -> None:
    prior = _copy_cr(tmp_path / "prior", "20200315", "prior.dcm")
    sr = _radiologist_sr(dcmread(prior, stop_before_pixels=True), tmp_path / "prior" / "sr.dcm")
    for path in (prior, sr):
        orthanc.client.post("/instances", content=path.read_bytes()).raise_for_status()


def _storescu(port: int, path: Path) -> None:
    subprocess.run(
        ["storescu", "-aet", "MODALITY", "-aec", "PACSAI", "127.0.0.1", str(port), str(path)],
        check=True,
        env=nodelay_env(),
        timeout=120,
    )


def _run_current(tmp_path: Path, env: dict[str, str]) -> tuple[dict[str, Any], Path]:
    """Send the current CR to a gateway; the CXRReportGen request row and the report SR."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    current = _copy_cr(tmp_path / "current", "20240610", "current.dcm")
    study_uid = str(dcmread(current, stop_before_pixels=True).StudyInstanceUID)
    with recording_emulator() as (endpoint, recorder):
        env = {
            "PACSAI_RULES_FILE": str(rules),
            "PACSAI_MODELS__CXRREPORTGEN__ENDPOINT": endpoint,
            **env,
        }
        with run_gateway(tmp_path / "var", "--quiet-period", "1", env=env) as gateway:
            _storescu(gateway.port, current)
            results = gateway.data_dir / "results" / study_uid
            report = wait_for(
                "the report SR",
                lambda: (
                    next((p for p in results.glob("*.dcm") if dcmread(p).Modality == "SR"), None)
                    if results.is_dir()
                    else None
                ),
            )
        (row,) = recorder.rows()
    return row, report


def _texts(items: Any) -> Iterator[str]:
    for item in items:
        if "TextValue" in item:
            yield str(item.TextValue)
        yield from _texts(item.get("ContentSequence", []))


def _root_texts(report: Path) -> list[str]:
    """Every TEXT value of the report SR's content tree."""
    return list(_texts(dcmread(report).ContentSequence))


def test_prior_image_and_radiologist_report_through_c_find_and_c_get(tmp_path: Path) -> None:
    """The CXRReportGen request carries Orthanc's prior image and the radiologist's report text
    (C-FIND Study Root, C-GET), and the comparison names the prior study (its date scrubbed, as
    the default egress policy does with every date in the text it sends)."""
    with run_orthanc(tmp_path / "orthanc", **_orthanc_config(web=False)) as pacs:
        _store_prior(pacs, tmp_path)
        env = {**dimse_destination("pacs", pacs), "PACSAI_PRIORS__SOURCE": "pacs"}
        row, report = _run_current(tmp_path, env)
    assert row.get("prior_image")
    assert row["prior_report"] == RADIOLOGIST_TEXT
    assert row["comparison"] == "Prior study of [date]"
    assert NO_PRIOR_STATEMENT not in _root_texts(report)


def test_prior_image_and_report_through_qido_and_wado(tmp_path: Path) -> None:
    """The same through a DICOMweb source: QIDO-RS for studies and series, WADO-RS for the
    instances."""
    with run_orthanc(tmp_path / "orthanc", **_orthanc_config(web=True)) as pacs:
        _store_prior(pacs, tmp_path)
        prefix = "PACSAI_DESTINATIONS__PACSWEB__"
        env = {
            **dimse_destination("pacs", pacs),
            f"{prefix}KIND": "dicomweb",
            f"{prefix}URL": f"http://127.0.0.1:{pacs.http_port}/dicom-web",
            "PACSAI_PRIORS__SOURCE": "pacsweb",
        }
        row, _ = _run_current(tmp_path, env)
    assert row.get("prior_image")
    assert row["prior_report"] == RADIOLOGIST_TEXT


@contextmanager
def silent_peer() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung PACS)."""
    server = socket.create_server(("127.0.0.1", free_port()))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def test_unreachable_pacs_the_job_runs_without_prior_and_says_so(tmp_path: Path) -> None:
    """With the prior source hanging, the job waits out priors.timeout_s, runs without a prior
    (no prior_image in the request) and the report SR says no prior was available."""
    with run_orthanc(tmp_path / "orthanc") as pacs, silent_peer() as port:
        prefix = "PACSAI_DESTINATIONS__HUNG__"
        env = {
            **dimse_destination("pacs", pacs),
            f"{prefix}AE_TITLE": "HUNG",
            f"{prefix}HOST": "127.0.0.1",
            f"{prefix}PORT": str(port),
            "PACSAI_PRIORS__SOURCE": "hung",
            "PACSAI_PRIORS__TIMEOUT_S": "3",
        }
        row, report = _run_current(tmp_path, env)
        log = (tmp_path / "serve.log").read_text()
    assert "prior_image" not in row
    assert row["comparison"] == "None"
    assert NO_PRIOR_STATEMENT in _root_texts(report)
    assert "prior_lookup_timed_out" in log
