"""``pacs-ai serve`` as a real process, fed by DCMTK storescu/echoscu over loopback."""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from factory import ct_series, write_series
from peers import Gateway, nodelay_env, run_gateway, run_storescp
from pydicom import dcmread
from pydicom.data import get_testdata_file

# Every test here runs on both receive engines (tests/conftest.py).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("receive_engine")]
CLI = [sys.executable, "-m", "listener.cli"]


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta group of a PS3.10 file (what went over the wire)."""
    data = path.read_bytes()
    (meta_length,) = struct.unpack_from("<I", data, 140)
    return data[144 + meta_length :]


def spool_index(gateway: Gateway) -> dict[str, Path]:
    """SOP Instance UID -> spool file, for every visible instance file."""
    spool = gateway.data_dir / "spool"
    return {p.stem: p for p in spool.glob("*/*/*.dcm")}


def storescu(gateway: Gateway, *files: Path, aet: str = "MODALITY") -> subprocess.Popen[str]:
    """Storescu -R -xv: one context per SOP class for JPEG 2000 and one uncompressed."""
    return subprocess.Popen(
        [
            "storescu",
            "-v",
            "-R",
            "-xv",
            "-aet",
            aet,
            "-aec",
            "PACSAI",
            "127.0.0.1",
            str(gateway.port),
        ]
        + [str(f) for f in files],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=nodelay_env(),
    )


def studies(gateway: Gateway) -> list[dict[str, object]]:
    """``pacs-ai studies --json`` of the gateway's data folder."""
    out = subprocess.run(
        [*CLI, "studies", "--json", "--data-dir", str(gateway.data_dir)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


def _storescu_args(port: int, files: list[Path], aec: str) -> list[str]:
    args = ["storescu", "-v", "-R", "-xv", "-aet", "MODALITY", "-aec", aec, "127.0.0.1"]
    return [*args, str(port), *map(str, files)]


def test_series_and_chest_cr_land_byte_identical(tmp_path: Path) -> None:
    """A 50-slice CT and the chest CR (uncompressed and JPEG 2000) are spooled byte-exact.

    What went over the wire is taken from DCMTK's bit-preserving storescp fed by the same
    storescu command (storescu re-encodes sequence lengths and drops trailing padding, so the
    source files themselves are not the reference).
    """
    ct = write_series(ct_series(50, rows=128, cols=128), tmp_path / "ct")
    cr = []
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        source = get_testdata_file(name)
        assert source is not None
        cr.append(Path(source))
    files = [*ct, *cr]
    with run_storescp(tmp_path / "reference") as reference:
        sent = subprocess.run(
            _storescu_args(reference.port, files, reference.aet),
            capture_output=True,
            env=nodelay_env(),
        )
        assert sent.returncode == 0, sent.stdout
    wire = {
        dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in reference.folder.iterdir()
    }
    with run_gateway(tmp_path / "data", "--quiet-period", "30") as gateway:
        sender = subprocess.run(
            _storescu_args(gateway.port, files, "PACSAI"),
            capture_output=True,
            text=True,
            env=nodelay_env(),
        )
        assert sender.returncode == 0, sender.stdout
        listed = studies(gateway)
    spooled = spool_index(gateway)
    assert len(spooled) == len(files) == len(wire)
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        stored = spooled[ds.SOPInstanceUID]
        assert stored.parent.parent.name == ds.StudyInstanceUID
        assert dataset_bytes(stored) == dataset_bytes(wire[ds.SOPInstanceUID]), path.name
        assert dcmread(stored).file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    by_study = {row["study_uid"]: row for row in listed}
    ct_study = dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID
    cr_studies = {dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in cr}
    assert by_study[ct_study]["instances"] == 50
    assert sum(by_study[uid]["instances"] for uid in cr_studies) == 2  # type: ignore[misc]
    assert all("patient" not in key for row in listed for key in row)


def test_echo_succeeds_and_unknown_caller_is_rejected(tmp_path: Path, receive_engine: str) -> None:
    """Echoscu from an allowed AE succeeds; another AE is rejected and the log says why; every
    receive process serves with the engine the setting names."""
    config = tmp_path / "settings.yaml"
    config.write_text("allowed_callers:\n  - ae_title: MODALITY\n")
    with run_gateway(tmp_path / "data", "--config", str(config)) as gateway:
        base = ["echoscu", "-v", "-aec", "PACSAI", "127.0.0.1", str(gateway.port)]
        ok = subprocess.run(
            [*base, "-aet", "MODALITY"], capture_output=True, text=True, env=nodelay_env()
        )
        bad = subprocess.run(
            [*base, "-aet", "INTRUDER"], capture_output=True, text=True, env=nodelay_env()
        )
        time.sleep(0.3)
        rejected = gateway.events("association_rejected")
        listening = gateway.events("receiver_listening")
    assert {event["engine"] for event in listening} == {receive_engine}
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert bad.returncode != 0
    assert "Calling AE Title Not Recognized" in bad.stdout + bad.stderr
    (event,) = rejected
    assert event["calling_ae"] == "INTRUDER"
    assert "not on the allow-list" in event["reason"]


def _acknowledged(output_lines: list[str]) -> list[Path]:
    """Files storescu -v reports a successful Store Response for, in order."""
    acked, current = [], None
    for line in output_lines:
        if "Sending file:" in line:
            current = Path(line.split("Sending file:", 1)[1].strip())
        elif "Received Store Response (Success)" in line and current is not None:
            acked.append(current)
    return acked


def test_kill_during_send_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    """After kill -9 mid-send and a restart, every acknowledged instance is there and intact."""
    files = write_series(ct_series(200, rows=256, cols=256), tmp_path / "ct")
    data_dir = tmp_path / "data"
    with run_gateway(data_dir) as gateway:
        sender = storescu(gateway, *files)
        assert sender.stdout is not None
        lines: list[str] = []
        for line in sender.stdout:
            lines.append(line)
            if len(_acknowledged(lines)) >= 60:
                gateway.kill_hard()
                break
        lines += sender.stdout.readlines()
        sender.wait(30)
    acked = _acknowledged(lines)
    assert 60 <= len(acked) < 200, "the kill did not land in the middle of the send"
    with run_gateway(data_dir, log_name="serve2.log") as gateway:
        listed = studies(gateway)
        leftovers = list((data_dir / "spool" / ".tmp").iterdir())
    spooled = spool_index(gateway)
    by_name = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in files}
    for path in acked:
        sop = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(spooled[sop]) == dataset_bytes(path)
    for sop, stored in spooled.items():  # nothing partial is visible
        assert dataset_bytes(stored) == dataset_bytes(by_name[sop])
    assert leftovers == []
    assert listed[0]["instances"] == len(spooled) >= len(acked)


def test_restart_during_quiet_period_releases_once_on_time(tmp_path: Path) -> None:
    """A study whose quiet period spans a hard restart is released once, when it falls due."""
    files = write_series(ct_series(3), tmp_path / "ct")
    data_dir = tmp_path / "data"
    quiet = 8.0  # long enough for the restart to finish inside the quiet period
    with run_gateway(data_dir, "--quiet-period", str(quiet)) as gateway:
        sender = storescu(gateway, *files)
        output, _ = sender.communicate(timeout=60)
        assert sender.returncode == 0, output
        time.sleep(1.0)
        gateway.kill_hard()
    with run_gateway(data_dir, "--quiet-period", str(quiet), log_name="serve2.log") as again:
        deadline = time.monotonic() + 20
        while not again.events("study_ready") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        listed = studies(again)
        ready = gateway.events("study_ready") + again.events("study_ready")
    (study,) = listed
    assert len(ready) == 1
    assert study["state"] == "dispatched"
    received = dcmread(files[-1], stop_before_pixels=True)
    assert ready[0]["study_uid"] == received.StudyInstanceUID
    journal = data_dir / "journal.sqlite"
    with sqlite3.connect(journal) as db:
        last, released = db.execute("SELECT last_received_at, released_at FROM studies").fetchone()
    # Never early; on time, or (when the restart itself outlasted the quiet period on a loaded
    # machine) as soon as the restarted worker looked, within a few poll intervals.
    first = again.events("release_loop_started")[0]
    started = datetime.fromisoformat(first["timestamp"]).timestamp()
    assert released - last >= quiet
    assert released < max(last + quiet, started) + 3.0


def test_send_command_reports_failures(tmp_path: Path) -> None:
    """pacs-ai send stores DICOM files and exits non-zero when one of them fails."""
    files = write_series(ct_series(3), tmp_path / "ct")
    junk = tmp_path / "ct" / "notes.txt"
    junk.write_text("not DICOM")
    with run_gateway(tmp_path / "data") as gateway:
        command = [sys.executable, "-m", "listener.cli", "send", "127.0.0.1", str(gateway.port)]
        good = subprocess.run([*command, "--no-progress", *map(str, files)], capture_output=True)
        mixed = subprocess.run(
            [*command, "--no-progress", str(tmp_path / "ct")], capture_output=True
        )
    assert good.returncode == 0, good.stderr
    assert mixed.returncode == 1 and b"notes.txt" in mixed.stderr
    assert len(spool_index(gateway)) == 3
    shutil.rmtree(tmp_path / "ct")
