"""DICOM TLS on send (PS3.15 Annex B): results to DCMTK ``storescp +tls`` requiring our
certificate; a certificate that does not verify is a dead letter with the TLS reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from factory import ct_series, write_series
from peers import StoreSCP, run_storescp
from pydicom import dcmread
from test_send import dataset_bytes, item, mixed_files
from tlscerts import Pki, make_pki

from listener.route import Destination
from listener.send.deliver import Deliverer, SendBackoff
from listener.send.scu import StoreSender, enable_chunked_send
from listener.store.outbox import EntryState, Outbox

pytestmark = pytest.mark.integration
T0 = 2_000_000.0


@pytest.fixture(autouse=True)
def _chunked() -> None:
    enable_chunked_send()  # what a sender process does at start-up


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Certificates made for this module."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_storescp_args(pki: Pki) -> list[str]:
    """Storescp over TLS with the server certificate, requiring a client certificate of the CA
    (``-rc``, DCMTK's default made explicit)."""
    return ["+tls", str(pki.server.key), str(pki.server.cert), "+cf", str(pki.ca), "-rc"]


def destination(scp: StoreSCP, pki: Pki, **tls: object) -> Destination:
    """A TLS destination for ``scp`` with our client certificate; ``tls`` overrides."""
    fields: dict[str, object] = {
        "tls": True,
        "tls_ca_file": pki.ca,
        "tls_cert_file": pki.client.cert,
        "tls_key_file": pki.client.key,
        **tls,
    }
    return Destination(ae_title=scp.aet, host="127.0.0.1", port=scp.port, **fields)  # type: ignore[arg-type]


def test_results_reach_storescp_over_tls_byte_identical(tmp_path: Path, pki: Pki) -> None:
    """Every file arrives at storescp +tls (client certificate required) byte for byte."""
    files = mixed_files(tmp_path / "src")
    with run_storescp(tmp_path / "scp", "STORESCP", *tls_storescp_args(pki)) as scp:
        outcomes = StoreSender("PACSAI").send(destination(scp, pki), [item(p) for p in files])
    assert [o.error for o in outcomes] == [None] * len(files)
    received = {
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in scp.folder.iterdir()
    }
    assert len(received) == len(files)
    for path in files:
        assert dataset_bytes(received[item(path).sop_instance_uid]) == dataset_bytes(path)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("server-certificate-unverified", "certificate verify failed"),
        ("our-certificate-refused", "unknown ca"),
    ],
)
def test_certificate_failure_is_a_dead_letter_with_the_tls_reason(
    tmp_path: Path, pki: Pki, case: str, reason: str
) -> None:
    """A server certificate from a CA we do not trust, or our certificate refused by the peer,
    dead-letters the entries at the first attempt with the TLS reason (no retry loop)."""
    tls: dict[str, object] = (
        {"tls_ca_file": pki.other_ca}
        if case == "server-certificate-unverified"
        else {"tls_cert_file": pki.stranger.cert, "tls_key_file": pki.stranger.key}
    )
    paths = write_series(ct_series(3), tmp_path / "ct")
    with run_storescp(tmp_path / "scp", "STORESCP", *tls_storescp_args(pki)) as scp:
        deliverer = Deliverer(
            Outbox(tmp_path / "journal.sqlite"),
            {"pacs": destination(scp, pki, **tls)},
            StoreSender("PACSAI"),
            SendBackoff(base_s=5),
        )
        for path in paths:
            deliverer.queue.enqueue("pacs", path, item(path).sop_instance_uid, "job-1", now=T0)
        report = deliverer.deliver_due(now=T0)
    assert report.dead == {"pacs": 3}
    dead = deliverer.queue.entries(EntryState.DEAD)
    assert all(reason in (e.last_error or "") for e in dead), dead[0].last_error
    assert not list(scp.folder.iterdir())
