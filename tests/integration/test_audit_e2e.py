"""The audit trail of one end-to-end run, and the egress policy, through ``pacs-ai serve``.

storescu sends a chest CR whose indication holds the patient's name and a date, and an
ultrasound image with burned-in text; the emulator plays the models, DCMTK storescp the PACS, a
TLS syslog collector started here receives the audit messages (RFC 5425 framing)."""

from __future__ import annotations

import base64
import re
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from lxml import etree
from peers import free_port, nodelay_env, run_gateway, run_storescp, wait_for
from pydicom import dcmread
from pydicom.data import get_testdata_file
from tlscerts import Pki, make_pki

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SCHEMA = etree.RelaxNG(etree.parse(str(ROOT / "docs" / "audit-message.rng")))


class SyslogCollector:
    """A TLS syslog collector (RFC 5425): octet-counted RFC 5424 messages, kept in order."""

    def __init__(self, pki: Pki) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pki.server.cert, pki.server.key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.messages: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(raw,), daemon=True).start()

    def _read(self, raw: socket.socket) -> None:
        with self.context.wrap_socket(raw, server_side=True) as conn:
            buffer = b""
            while chunk := conn.recv(65536):
                buffer += chunk
                while b" " in buffer:
                    length, _, rest = buffer.partition(b" ")
                    if len(rest) < int(length):
                        break
                    self.messages.append(rest[: int(length)].decode("utf-8"))
                    buffer = rest[int(length) :]

    def close(self) -> None:
        self.sock.close()


def _inputs(folder: Path) -> tuple[Path, Path]:
    """The chest CR with a name and a date in its indication, and an ultrasound image marked
    Burned In Annotation YES."""
    folder.mkdir(parents=True, exist_ok=True)
    cr = dcmread(get_testdata_file("RG1_UNCR.dcm"))
    cr.PatientName = "Doe^Johnathan"
    cr.PatientID = "PID778899"
    cr.ReasonForTheRequestedProcedure = "Johnathan Doe, cough since 12.03.2024, rule out pneumonia"
    cr.save_as(folder / "cr.dcm")
    us = dcmread(get_testdata_file("US1_UNCR.dcm"))
    us.BurnedInAnnotation = "YES"
    us.save_as(folder / "us.dcm")
    return folder / "cr.dcm", folder / "us.dcm"


def _details(message: str) -> dict[str, str]:
    root = etree.fromstring(message.encode())
    return {
        str(el.get("type")): base64.b64decode(el.get("value")).decode()
        for el in root.iter("ParticipantObjectDetail")
    }


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[tuple[SyslogCollector, Pki]]:
    """A TLS syslog collector with its PKI."""
    pki = make_pki(tmp_path / "pki")
    syslog = SyslogCollector(pki)
    yield syslog, pki
    syslog.close()


def test_audit_trail_of_a_run_validates_and_reaches_syslog(
    tmp_path: Path, collector: tuple[SyslogCollector, Pki]
) -> None:
    """Receive, model calls, results sent and a retry through the admin API each leave DICOM
    audit messages that validate against the PS3.15 A.5.1 schema and reach the collector; the
    default egress policy sends the CXR indication with the name and the date scrubbed and does
    not send the burned-in ultrasound image."""
    syslog, pki = collector
    cr, us = _inputs(tmp_path / "in")
    with run_storescp(tmp_path / "pacs", "PACS") as pacs:
        env = {
            "PACSAI_DESTINATIONS__PACS__AE_TITLE": pacs.aet,
            "PACSAI_DESTINATIONS__PACS__HOST": "127.0.0.1",
            "PACSAI_DESTINATIONS__PACS__PORT": str(pacs.port),
            "PACSAI_AUDIT__SYSLOG_HOST": "127.0.0.1",
            "PACSAI_AUDIT__SYSLOG_PORT": str(syslog.port),
            "PACSAI_AUDIT__SYSLOG_CA_FILE": str(pki.ca),
            "PACSAI_ADMIN_PORT": str(free_port()),
        }
        with run_gateway(tmp_path / "var", "--quiet-period", "1", env=env) as gateway:
            subprocess.run(
                [
                    "storescu",
                    "-aet",
                    "MODALITY",
                    "-aec",
                    "PACSAI",
                    "127.0.0.1",
                    str(gateway.port),
                    str(cr),
                    str(us),
                ],
                check=True,
                env=nodelay_env(),
                timeout=120,
            )
            api = httpx.Client(base_url=gateway.admin_url, timeout=30)
            wait_for("results at the PACS", lambda: len(list(pacs.folder.iterdir())) >= 2)
            failed = wait_for(
                "the ultrasound job to fail",
                lambda: [j for j in api.get("/api/jobs").json() if j["state"] == "CANCELED"],
            )
            retried = api.post(f"/api/jobs/{failed[0]['id']}/retry", json={})
            assert retried.status_code in (200, 409)
            wait_for(
                "the results-sent record",
                lambda: api.get(
                    "/api/audit", params={"event": "DICOM Instances Transferred"}
                ).json(),
            )
            records = api.get("/api/audit", params={"limit": 1000}).json()
            wait_for("every record at the collector", lambda: len(syslog.messages) >= len(records))
            api.close()

    events = {r["event"] for r in records}
    assert {
        "Security Alert",
        "DICOM Instances Transferred",
        "Begin Transferring DICOM Instances",
    } <= events
    assert "Application Activity" in events
    for record in records:
        assert SCHEMA.validate(etree.fromstring(record["message"].encode())), (
            record["summary"],
            SCHEMA.error_log,
        )
    shipped = [m.split(" - \ufeff", 1)[1] for m in syslog.messages]
    assert {r["message"] for r in records} <= set(shipped)
    assert all(
        re.match(r"<8[45]>1 \S+Z \S+ pacs-ai \d+ IHE\+RFC-3881 - ", m) for m in syslog.messages
    )

    calls = [r for r in records if r["event"] == "Begin Transferring DICOM Instances"]
    cr_uid, us_uid = str(dcmread(cr).StudyInstanceUID), str(dcmread(us).StudyInstanceUID)
    cxr = _details(
        next(
            r["message"]
            for r in calls
            if r["study_uid"] == cr_uid
            and r["outcome"] == "0"
            and r["summary"].startswith("model cxrreportgen:")
        )
    )
    assert cxr["ImagesSent"] == "1"
    assert "Johnathan" not in cxr["Text indication"] and "Doe" not in cxr["Text indication"]
    assert "12.03.2024" not in cxr["Text indication"]
    assert "[name]" in cxr["Text indication"] and "[date]" in cxr["Text indication"]
    refused = [r for r in calls if r["study_uid"] == us_uid]
    assert refused and all(r["outcome"] == "4" for r in refused)
    assert "Burned In Annotation is YES" in refused[0]["message"]
    received = [r for r in records if r["summary"].startswith("received")]
    assert any("PID778899" in r["message"] for r in received)  # the audit store carries the ID
    admin = [r for r in records if r["summary"].startswith("admin retry")]
    assert admin and "127.0.0.1" in admin[0]["message"]
    log = (tmp_path / "serve.log").read_text()
    assert "Johnathan" not in log and "Doe^" not in log
