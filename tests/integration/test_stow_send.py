"""STOW-RS to Orthanc's DICOMweb plugin: basic auth, an outage, one refused instance."""

from __future__ import annotations

from pathlib import Path

import pytest
from factory import ct_series, write_series
from peers import free_port, run_orthanc
from pydicom import dcmread
from webpeers import chest_cr

from listener.send.deliver import Deliverer, SendBackoff
from listener.send.scu import StoreSender
from listener.settings import Destination, WebAuth
from listener.store.outbox import Outbox

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
USER, PASSWORD = "gateway", "orthanc-secret"


def orthanc_web(http_port: int, **config: object) -> dict[str, object]:
    """Orthanc settings with its DICOMweb plugin and basic auth on ``http_port``."""
    return {
        "HttpPort": http_port,
        "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        **config,
    }


def web_destination(http_port: int, password: str = PASSWORD) -> Destination:
    """A dicomweb destination of an Orthanc on ``http_port``."""
    return Destination(
        kind="dicomweb",
        url=f"http://127.0.0.1:{http_port}/dicom-web",
        auth=WebAuth(type="basic", username=USER, password=password),  # type: ignore[arg-type]
        timeout_s=30,
    )


def queue(deliverer: Deliverer, files: list[Path], job: str) -> None:
    """Queue ``files`` for the destination ``pacs``."""
    for path in files:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        deliverer.queue.enqueue("pacs", path, uid, job, now=T0)


def test_results_reach_orthanc_over_stow_once_after_an_outage(tmp_path: Path) -> None:
    """With Orthanc down the STOW-RS sends back off; once it is up every instance arrives once
    (a later delivery sends nothing again), with basic auth."""
    port = free_port()
    deliverer = Deliverer(
        Outbox(tmp_path / "journal.sqlite"),
        {"pacs": web_destination(port)},
        StoreSender("PACSAI"),
        SendBackoff(base_s=30),
    )
    files = [*write_series(ct_series(6), tmp_path / "ct"), chest_cr()]
    queue(deliverer, files, "job-1")
    down = deliverer.deliver_due(now=T0)
    assert down.retrying == {"pacs": 7} and down.total_sent == 0
    assert all("connection failed" in (e.last_error or "") for e in deliverer.queue.entries())
    with run_orthanc(tmp_path / "orthanc", **orthanc_web(port)) as pacs:
        assert deliverer.deliver_due(now=T0 + 10).total_sent == 0  # still backing off
        assert deliverer.deliver_due(now=T0 + 30).sent == {"pacs": 7}
        assert deliverer.deliver_due(now=T0 + 10_000).total_sent == 0
        assert pacs.instance_count() == 7
        assert deliverer.queue.counts("job-1") == {"sent": 7}


def test_wrong_password_is_a_dead_letter(tmp_path: Path) -> None:
    """A 401 from the DICOMweb service is permanent: dead letters, nothing stored."""
    port = free_port()
    deliverer = Deliverer(
        Outbox(tmp_path / "journal.sqlite"),
        {"pacs": web_destination(port, password="wrong")},
        StoreSender("PACSAI"),
    )
    queue(deliverer, write_series(ct_series(2), tmp_path / "ct"), "job-2")
    with run_orthanc(tmp_path / "orthanc", **orthanc_web(port)) as pacs:
        assert deliverer.deliver_due(now=T0).dead == {"pacs": 2}
        assert pacs.instance_count() == 0
        assert "HTTP 401" in (deliverer.queue.dead_letters()[0].last_error or "")


def test_one_refused_instance_is_dead_lettered_alone(tmp_path: Path) -> None:
    """Orthanc answering 400 to a batch for one instance it cannot read (a cut-short file) ends
    in a dead letter for that instance only: the batch is tried again one instance per request,
    the others are sent once and not sent again."""
    files = write_series(ct_series(5), tmp_path / "ct")
    refused = str(dcmread(files[2], stop_before_pixels=True).SOPInstanceUID)
    files[2].write_bytes(files[2].read_bytes()[:3000])
    port = free_port()
    deliverer = Deliverer(
        Outbox(tmp_path / "journal.sqlite"),
        {"pacs": web_destination(port)},
        StoreSender("PACSAI"),
    )
    queue(deliverer, files, "job-3")
    with run_orthanc(tmp_path / "orthanc", **orthanc_web(port)) as pacs:
        report = deliverer.deliver_due(now=T0)
        assert report.sent == {"pacs": 4} and report.dead == {"pacs": 1}
        (dead,) = deliverer.queue.dead_letters()
        assert dead.sop_instance_uid == refused
        assert "HTTP 400" in (dead.last_error or "")
        assert deliverer.deliver_due(now=T0 + 10_000).total_sent == 0
        assert pacs.instance_count() == 4
