"""DICOM TLS on receive (PS3.15 Annex B): ``pacs-ai serve`` fed by DCMTK ``storescu +tls``."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from factory import ct_series, write_series
from peers import Gateway, free_port, nodelay_env, run_gateway, run_storescp
from pydicom import dcmread
from pydicom.data import get_testdata_file
from test_receive_serve import dataset_bytes, spool_index
from tlscerts import KeyPair, Pki, make_pki

# Every test here runs on both receive engines (tests/conftest.py).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("receive_engine")]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Certificates made for this module."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_env(pki: Pki, port: int, *, require: bool = True) -> dict[str, str]:
    """The TLS settings as environment variables, as an operator would set them."""
    return {
        "PACSAI_TLS__CERT_FILE": str(pki.server.cert),
        "PACSAI_TLS__KEY_FILE": str(pki.server.key),
        "PACSAI_TLS__CA_FILE": str(pki.ca),
        "PACSAI_TLS__REQUIRE_CLIENT_CERT": "true" if require else "false",
        "PACSAI_TLS__PORT": str(port),
    }


def storescu(
    port: int, files: list[Path], *, aec: str, tls: list[str] | None = None, aet: str = "MODALITY1"
) -> subprocess.CompletedProcess[str]:
    """Storescu -R -xv (one context per SOP class and syntax), with DCMTK's TLS options."""
    args = ["storescu", "-R", "-xv", "-aet", aet, "-aec", aec, *(tls or [])]
    return subprocess.run(
        [*args, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env=nodelay_env(),
        timeout=300,
    )


def with_cert(pki: Pki, pair: KeyPair) -> list[str]:
    """Storescu's options for TLS with a client certificate, trusting the test CA."""
    return ["+tls", str(pair.key), str(pair.cert), "+cf", str(pki.ca)]


def refusals(gateway: Gateway) -> list[dict[str, object]]:
    """The association log's refused rows, from the journal."""
    with sqlite3.connect(gateway.data_dir / "journal.sqlite") as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM associations WHERE ended = 'rejected'").fetchall()
    return [dict(row) for row in rows]


@pytest.fixture
def test_files(tmp_path: Path) -> list[Path]:
    """A 100-slice CT series (256x256) and the chest CR, uncompressed and JPEG 2000."""
    files = write_series(ct_series(100, rows=256, cols=256), tmp_path / "ct")
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        source = get_testdata_file(name)
        assert source is not None
        files.append(Path(source))
    return files


@pytest.fixture
def tls_gateway(tmp_path: Path, pki: Pki) -> Iterator[tuple[Gateway, int]]:
    """A gateway requiring client certificates on its TLS port (and its plain port open)."""
    port = free_port()
    with run_gateway(tmp_path / "data", env=tls_env(pki, port)) as gateway:
        yield gateway, port


def test_series_and_cr_over_tls_land_byte_identical(
    tmp_path: Path, pki: Pki, test_files: list[Path], tls_gateway: tuple[Gateway, int]
) -> None:
    """DCMTK storescu +tls with a client certificate stores a 100-slice series and a chest CR on the
    TLS port, byte-identical to what DCMTK's storescp receives from the same command."""
    gateway, tls_port = tls_gateway
    with run_storescp(tmp_path / "reference") as reference:
        sent = storescu(reference.port, test_files, aec=reference.aet)
        assert sent.returncode == 0, sent.stdout + sent.stderr
    wire = {
        dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in reference.folder.iterdir()
    }

    over_tls = storescu(tls_port, test_files, aec="PACSAI", tls=with_cert(pki, pki.client))

    assert over_tls.returncode == 0, over_tls.stdout + over_tls.stderr
    spooled = spool_index(gateway)
    assert len(spooled) == len(test_files) == len(wire)
    for uid, stored in spooled.items():
        assert dataset_bytes(stored) == dataset_bytes(wire[uid]), uid
    (accepted,) = [e for e in gateway.events("association_accepted") if e.get("tls")]
    assert accepted["tls_subject"] == "MODALITY1"


def test_tls_port_refuses_plain_and_unauthenticated_clients(
    tmp_path: Path, pki: Pki, test_files: list[Path], tls_gateway: tuple[Gateway, int]
) -> None:
    """Plain DICOM to the TLS port fails; with require_client_cert a client without a
    certificate, and one whose certificate another CA signed, are refused in the handshake and
    the refusals are in the association log; the plain port still takes plain DICOM."""
    gateway, tls_port = tls_gateway
    one = test_files[:1]

    plain_to_tls = storescu(tls_port, one, aec="PACSAI")
    anonymous = storescu(tls_port, one, aec="PACSAI", tls=["+tla", "+cf", str(pki.ca)])
    stranger = storescu(tls_port, one, aec="PACSAI", tls=with_cert(pki, pki.stranger))
    plain = storescu(gateway.port, one, aec="PACSAI")
    time.sleep(0.3)  # the refusals are journaled by the receive process after the handshake

    assert plain_to_tls.returncode != 0
    assert anonymous.returncode != 0
    assert stranger.returncode != 0
    assert plain.returncode == 0, plain.stdout + plain.stderr
    reasons = [str(row["error"]) for row in refusals(gateway)]
    assert len(reasons) == 3, reasons
    assert all(reason.startswith("TLS handshake failed") for reason in reasons)
    assert any("certificate" in reason for reason in reasons)
    logged = [e for e in gateway.events("association_rejected") if e.get("tls")]
    assert len(logged) == 3
    assert len(spool_index(gateway)) == 1


def test_port_zero_leaves_only_the_tls_listener(
    tmp_path: Path, pki: Pki, test_files: list[Path]
) -> None:
    """With ``port: 0`` nothing listens in plain DICOM; the TLS port serves alone."""
    tls_port, plain_port = free_port(), free_port()
    env = {**tls_env(pki, tls_port), "PACSAI_PORT": "0"}
    with run_gateway(tmp_path / "data", "--port", "0", env=env, port=plain_port) as gateway:
        listening = gateway.events("receiver_listening")
        over_tls = storescu(tls_port, test_files[:1], aec="PACSAI", tls=with_cert(pki, pki.client))
        plain = storescu(plain_port, test_files[:1], aec="PACSAI")
    assert {e["port"] for e in listening} == {tls_port}
    assert over_tls.returncode == 0, over_tls.stdout + over_tls.stderr
    assert plain.returncode != 0
