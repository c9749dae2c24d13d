"""``pacs-ai serve`` on loopback against a taken port and hostile input; each attack is followed
by a normal storescu send that must succeed. Memory is measured as the receive process's peak
resident set (VmHWM), a bound on memory, not a timing."""

from __future__ import annotations

import json
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rawdicom
from factory import ct_series, write_series
from peers import Gateway, nodelay_env, run_gateway

# Every test here runs on both receive engines (tests/conftest.py).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("receive_engine")]
CLI = [sys.executable, "-m", "listener.cli"]
MIB = 1024 * 1024
RSS_LIMIT_MB = 300
TIMEOUT_S = 2.0


def _serve_env() -> dict[str, str]:
    return nodelay_env(PACSAI_ADMIN_PORT="0", PACSAI_DISK_MIN_FREE_MB="0")


def _serve_command(port: int, data_dir: Path) -> list[str]:
    return [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]


def _echo(port: int) -> bool:
    done = subprocess.run(
        ["echoscu", "-aet", "ECHOER", "-aec", "PACSAI", "127.0.0.1", str(port)],
        capture_output=True,
        env=nodelay_env(),
    )
    return done.returncode == 0


def test_second_serve_on_the_port_fails_and_the_first_keeps_every_association(
    tmp_path: Path,
) -> None:
    """A second gateway on the same port exits non-zero naming the port; all 20 echoes that
    follow are answered by the first one."""
    with run_gateway(tmp_path / "first") as first:
        second = subprocess.run(
            _serve_command(first.port, tmp_path / "second"),
            capture_output=True,
            text=True,
            env=_serve_env(),
            timeout=60,
        )
        answered = sum(_echo(first.port) for _ in range(20))
        time.sleep(0.5)
        with sqlite3.connect(first.data_dir / "journal.sqlite") as db:
            (logged,) = db.execute(
                "SELECT COUNT(*) FROM associations WHERE calling_ae = 'ECHOER'"
            ).fetchone()
    assert second.returncode != 0
    assert f"port: {first.port}" in second.stderr
    assert answered == 20 and logged == 20
    assert not (tmp_path / "second" / "journal.sqlite").exists()


def test_port_held_by_another_program_stops_start_up_in_one_line(tmp_path: Path) -> None:
    """With the DICOM port held by another program, serve exits non-zero with one line that
    names the setting ``port`` (no crash-looping receive processes)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            _serve_command(port, tmp_path / "data"),
            capture_output=True,
            text=True,
            env=_serve_env(),
            timeout=60,
        )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"port: {port}" in lines[0], done.stderr


def test_admin_port_held_by_another_program_stops_start_up_in_one_line(tmp_path: Path) -> None:
    """With the admin port held by another program, serve exits non-zero with one line that
    names the setting ``admin_port`` (not a traceback)."""
    with socket.socket() as holder, socket.socket() as free:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        admin_port = holder.getsockname()[1]
        free.bind(("127.0.0.1", 0))
        dicom_port = free.getsockname()[1]
        free.close()
        done = subprocess.run(
            _serve_command(dicom_port, tmp_path / "data"),
            capture_output=True,
            text=True,
            env={**_serve_env(), "PACSAI_ADMIN_PORT": str(admin_port)},
            timeout=60,
        )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"admin_port: {admin_port}" in lines[0], done.stderr


def _receive_pid(gateway: Gateway) -> int:
    (started,) = [e for e in gateway.events("child_started") if e["child"] == "receive-0"]
    return int(started["pid"])


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _normal_send(gateway: Gateway, folder: Path) -> None:
    """A modality sends one CT slice with storescu; it must be stored."""
    (path,) = write_series(ct_series(1), folder)
    done = subprocess.run(
        [
            "storescu",
            "-aet",
            "MODALITY",
            "-aec",
            "PACSAI",
            "127.0.0.1",
            str(gateway.port),
            str(path),
        ],
        capture_output=True,
        text=True,
        env=nodelay_env(),
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert list((gateway.data_dir / "spool").glob(f"*/*/{path.stem}*")) or _stored(gateway, path)


def _stored(gateway: Gateway, path: Path) -> bool:
    from pydicom import dcmread

    uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
    return bool(list((gateway.data_dir / "spool").glob(f"*/*/{uid}.dcm")))


def _all_closed_by_gateway(socks: list[socket.socket]) -> None:
    """Each connection is closed by the gateway within the timeout plus a second; our own read
    timeout is longer, so a connection the gateway keeps open fails the test."""
    started = time.monotonic()
    for sock in socks:
        sock.settimeout(TIMEOUT_S + 10)
        assert rawdicom.closed_by_peer(sock)
        sock.close()
    assert time.monotonic() - started < TIMEOUT_S + 1


def _reasons(gateway: Gateway) -> list[dict[str, object]]:
    folder = gateway.data_dir / "quarantine"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def test_hostile_input_is_bounded_and_the_gateway_keeps_serving(tmp_path: Path) -> None:
    """A 4 GiB PDU length, eight silent and eight stalled connections, a deflate bomb, a 256 MiB
    instance and malformed UIDs: each is refused or stored within bounded memory, and a normal
    storescu send succeeds after each."""
    args = ["--config", str(tmp_path / "settings.yaml")]
    (tmp_path / "settings.yaml").write_text(
        f"acse_timeout_s: {TIMEOUT_S}\nnetwork_timeout_s: {TIMEOUT_S}\n"
        "max_associations: 8\nreceive_processes: 1\n"
    )
    ct = [(rawdicom.CT_IMAGE, [rawdicom.EXPLICIT_LE])]
    with run_gateway(tmp_path / "data", *args) as gateway:
        pid = _receive_pid(gateway)

        # A P-DATA-TF PDU whose length field says 4 GiB: aborted before anything is allocated.
        assoc = rawdicom.associate(gateway.port, ct)
        assoc.sock.sendall(struct.pack(">BBI", rawdicom.P_DATA_TF, 0, 0xFFFFFFFF) + bytes(4096))
        assert rawdicom.read_pdu(assoc.sock)[0] == rawdicom.A_ABORT
        assert _peak_rss_mb(pid) < RSS_LIMIT_MB
        _normal_send(gateway, tmp_path / "after-pdu")

        # Eight connections that never associate take every slot; each is closed by the
        # gateway after acse_timeout, and a modality is served again.
        silent = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(8)]
        _all_closed_by_gateway(silent)
        _normal_send(gateway, tmp_path / "after-silent")

        # Eight associations that stall inside a PDU: closed after network_timeout.
        stalled = []
        for _ in range(8):
            held = rawdicom.associate(gateway.port, ct)
            held.sock.sendall(struct.pack(">BBI", rawdicom.P_DATA_TF, 0, 1000) + bytes(10))
            stalled.append(held.sock)
        _all_closed_by_gateway(stalled)
        _normal_send(gateway, tmp_path / "after-stall")

        # A deflate bomb: 512 MiB of zeros deflated to half a megabyte, over max_inflated_mb.
        bomb_uid = ct_series(1)[0].SOPInstanceUID
        blob = rawdicom.private_blob(512 * MIB)
        bomb = b"".join(rawdicom.deflated([rawdicom.header(bomb_uid), *blob]))
        assert len(bomb) < MIB
        assoc = rawdicom.associate(gateway.port, [(rawdicom.CT_IMAGE, [rawdicom.DEFLATED_LE])])
        status = rawdicom.send_store(assoc, 1, bomb_uid, [bomb])
        assoc.release()
        assert status == 0xA700  # Refused: Out of Resources
        (reason,) = [r for r in _reasons(gateway) if r["command_sop_instance"] == bomb_uid]
        assert "inflates to more than" in str(reason["reason"])
        assert _peak_rss_mb(pid) < RSS_LIMIT_MB
        _normal_send(gateway, tmp_path / "after-bomb")

        # A 256 MiB instance is stored, streamed to the spool.
        assoc = rawdicom.associate(gateway.port, ct)
        big_uid = ct_series(1)[0].SOPInstanceUID
        data = [rawdicom.header(big_uid), *rawdicom.private_blob(256 * MIB)]
        status = rawdicom.send_store(assoc, 1, big_uid, data, fragment=262144 - 6)
        assoc.release()
        assert status == 0x0000
        (big,) = (gateway.data_dir / "spool").glob(f"*/*/{big_uid}.dcm")
        assert big.stat().st_size > 256 * MIB
        assert _peak_rss_mb(pid) < RSS_LIMIT_MB
        _normal_send(gateway, tmp_path / "after-big")

        # Malformed UIDs: refused with a failure status and quarantined, nothing named by them.
        assoc = rawdicom.associate(gateway.port, ct)
        for sop, study in (("1." + "2" * 63, "1.2.3"), ("1.02.3", "1.2.3"), ("1.2.9", "1.2.3\n")):
            data = [rawdicom.header(sop, study=study)]
            assert rawdicom.send_store(assoc, 1, sop, data) == 0xA900
        assoc.release()
        refused = {str(r["command_sop_instance"]) for r in _reasons(gateway)}
        assert {"1." + "2" * 63, "1.02.3", "1.2.9"} <= refused
        names = {p.name for p in (gateway.data_dir / "spool").rglob("*")}
        assert not {n for n in names if "\n" in n or n.startswith(("1.02.3", "1.2.9", "1.222"))}
        _normal_send(gateway, tmp_path / "after-uids")

        with sqlite3.connect(gateway.data_dir / "journal.sqlite") as db:
            errors = [row[0] for row in db.execute("SELECT error FROM associations")]
        print(f"receive process peak RSS: {_peak_rss_mb(pid):.0f} MB")
    assert any("4294967295" in str(error) for error in errors)
