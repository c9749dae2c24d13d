"""``pacs-ai serve`` with its spool on S3 (SeaweedFS ``weed mini`` over loopback), fed by DCMTK
storescu and curl (STOW-RS): what is acknowledged reaches the bucket byte for byte in both ack
modes, and uploads pending at a kill -9 are resumed by the next start."""

from __future__ import annotations

import sqlite3
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
from factory import ct_series, write_series
from peers import Gateway, free_port, nodelay_env, run_gateway, wait_for
from s3peer import SECRET_ACCESS_KEY, SeaweedS3, object_bytes
from webpeers import REFERENCED_SOP_SEQUENCE, curl_stow, multipart_body

pytestmark = pytest.mark.integration


def _storescu(gateway: Gateway, files: list[Path]) -> None:
    """Send ``files`` over one association; fails unless every C-STORE was answered Success."""
    answer = subprocess.run(
        ["storescu", "-aec", "PACSAI", "127.0.0.1", str(gateway.port), *map(str, files)],
        env=nodelay_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answer.returncode == 0, answer.stdout + answer.stderr


def _spool_files(gateway: Gateway) -> dict[str, bytes]:
    """Spool path (relative) -> bytes of every visible instance file."""
    spool = gateway.data_dir / "spool"
    return {p.relative_to(spool).as_posix(): p.read_bytes() for p in spool.glob("*/*/*.dcm")}


def _uploads(gateway: Gateway) -> dict[str, int]:
    """Upload rows of the journal by state."""
    with sqlite3.connect(gateway.data_dir / "journal.sqlite") as db:
        rows = db.execute("SELECT state, COUNT(*) FROM spool_uploads GROUP BY state").fetchall()
    return {str(state): int(count) for state, count in rows}


@pytest.mark.parametrize("ack", ["local", "uploaded"])
def test_an_acknowledged_instance_is_in_the_bucket_with_the_same_bytes(
    tmp_path: Path, seaweedfs: SeaweedS3, ack: str
) -> None:
    """Three CT slices are answered Success; each one's object holds the local spool file's
    bytes. With ``s3.ack: uploaded`` the objects are there when storescu has its answers;
    with ``local`` the uploader puts them there and marks every upload done; the metrics count
    them, and the log names the bucket but never the secret."""
    files = write_series(ct_series(3), tmp_path / "in")
    prefix = uuid.uuid4().hex
    with run_gateway(tmp_path / "var", env=seaweedfs.env(prefix, ack=ack)) as gateway:
        _storescu(gateway, files)
        stored = _spool_files(gateway)
        assert len(stored) == 3
        url = seaweedfs.spool_url(prefix)
        if ack == "uploaded":
            assert {p: object_bytes(seaweedfs, url, p) for p in stored} == stored
            assert _uploads(gateway) == {"uploaded": 3}
        else:
            wait_for("uploads", lambda: _uploads(gateway) == {"uploaded": 3}, timeout=60)
            assert {p: object_bytes(seaweedfs, url, p) for p in stored} == stored
        metrics = httpx.get(f"{gateway.admin_url}/metrics", timeout=30).text
        assert 'pacsai_spool_uploads{state="uploaded"} 3.0' in metrics
        (spool,) = gateway.events("spool_configured")
        assert spool["bucket_url"] == url and spool["ack"] == ack and spool["key_set"] is True
        assert SECRET_ACCESS_KEY not in gateway.log_path.read_text()


def test_uploads_pending_at_a_kill_9_resume_after_restart(
    tmp_path: Path, seaweedfs: SeaweedS3
) -> None:
    """With the bucket unreachable (``ack: local``) three instances are acknowledged and their
    uploads stay pending; the gateway is killed with SIGKILL; started again with the bucket
    reachable, it uploads all three with the bytes that were acknowledged."""
    files = write_series(ct_series(3), tmp_path / "in")
    prefix = uuid.uuid4().hex
    url = seaweedfs.spool_url(prefix)
    unreachable = f"http://127.0.0.1:{free_port()}"
    data_dir = tmp_path / "var"
    env = seaweedfs.env(prefix, endpoint_url=unreachable)
    with run_gateway(data_dir, env=env) as gateway:
        _storescu(gateway, files)
        wait_for("a failed upload", lambda: gateway.events("spool_upload_failed"), timeout=60)
        stored = _spool_files(gateway)
        assert _uploads(gateway) == {"pending": 3}
        gateway.kill_hard()
    assert all(object_bytes(seaweedfs, url, p) is None for p in stored)
    with run_gateway(data_dir, env=seaweedfs.env(prefix), log_name="restart.log") as gateway:
        wait_for("resumed uploads", lambda: _uploads(gateway) == {"uploaded": 3}, timeout=60)
        assert {p: object_bytes(seaweedfs, url, p) for p in stored} == stored


def test_a_stow_rs_instance_is_answered_only_once_in_the_bucket(
    tmp_path: Path, seaweedfs: SeaweedS3
) -> None:
    """With ``s3.ack: uploaded`` a STOW-RS upload of two CT slices is answered 200 with both
    stored, and both objects are in the bucket with the local spool file's bytes by then."""
    files = write_series(ct_series(2), tmp_path / "in")
    body = multipart_body(tmp_path / "body.bin", [("application/dicom", p) for p in files])
    prefix = uuid.uuid4().hex
    with run_gateway(tmp_path / "var", env=seaweedfs.env(prefix, ack="uploaded")) as gateway:
        code, _, answer = curl_stow(f"{gateway.admin_url}/dicomweb/studies", body)
        assert code == 200 and len(answer[REFERENCED_SOP_SEQUENCE]["Value"]) == 2
        stored = _spool_files(gateway)
        url = seaweedfs.spool_url(prefix)
        assert len(stored) == 2
        assert {p: object_bytes(seaweedfs, url, p) for p in stored} == stored
