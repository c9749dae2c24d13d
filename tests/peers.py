"""Real DICOM peers for tests and benchmarks: Orthanc as the PACS, DCMTK storescp as a receiver.

Each peer runs as its own process on free loopback ports with TCP_NODELAY=1 (DCMTK and Orthanc keep
Nagle's algorithm on otherwise, and every C-STORE then waits for a delayed ACK).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydicom import dcmread
from pydicom.errors import InvalidDicomError


def free_port() -> int:
    """Return a TCP port that is free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def nodelay_env(**extra: str) -> dict[str, str]:
    """The environment for DCMTK tools and Orthanc: ours plus TCP_NODELAY=1."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    env.update(extra)
    return env


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium(profile: Path, *args: str) -> str:
    """Run headless Chromium with a fresh profile folder (e.g. ``--dump-dom URL``: the page's
    DOM after its scripts ran); its standard output."""
    exe = shutil.which("chromium")
    assert exe is not None, "chromium is missing: run scripts/install-system-deps"
    result = subprocess.run(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=nodelay_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def send_with_storescu(
    port: int,
    paths: list[Path],
    *,
    aet: str = "MODALITY",
    aec: str = "PACSAI",
    timeout: float = 300,
) -> None:
    """DCMTK storescu sends ``paths`` over one association to ``port`` on loopback; fails unless
    every C-STORE was answered Success."""
    subprocess.run(
        ["storescu", "-aet", aet, "-aec", aec, "127.0.0.1", str(port), *map(str, paths)],
        check=True,
        env=nodelay_env(),
        timeout=timeout,
    )


def wait_for(what: str, check: Any, timeout: float = 240.0) -> Any:
    """Poll ``check`` every half second until it returns something true, and return that;
    fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def wait_for_port(
    port: int, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None
) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not gone after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


@dataclass
class Orthanc:
    """A running Orthanc: its AE title, DICOM port and REST client."""

    aet: str
    dicom_port: int
    http_port: int
    client: httpx.Client

    def get(self, path: str) -> Any:
        response = self.client.get(path)
        response.raise_for_status()
        return response.json()

    def find(self, level: str, query: dict[str, str]) -> list[dict[str, Any]]:
        """Orthanc's /tools/find with expanded answers."""
        response = self.client.post(
            "/tools/find", json={"Level": level, "Query": query, "Expand": True}
        )
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])


@contextmanager
def run_orthanc(workdir: Path, aet: str = "ORTHANC", **config: Any) -> Iterator[Orthanc]:
    """Start Debian's Orthanc with a private storage folder and free ports; stop it afterwards."""
    exe = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    settings: dict[str, Any] = {
        "Name": "test-pacs",
        "StorageDirectory": str(workdir / "db"),
        "IndexDirectory": str(workdir / "db"),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False,
        "StableAge": 2,
        "Plugins": [],
    }
    settings.update(config)
    dicom_port, http_port = int(settings["DicomPort"]), int(settings["HttpPort"])
    users = settings.get("RegisteredUsers") if settings["AuthenticationEnabled"] else None
    auth = next(iter(users.items())) if users else None
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(settings, indent=2))
    log = (workdir / "orthanc.log").open("wb")
    proc = subprocess.Popen(
        [exe, f"--logdir={workdir}", str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=nodelay_env(),
        start_new_session=True,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30, auth=auth)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {proc.returncode}; see {workdir}")
            try:
                if client.get("/system").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("Orthanc did not answer within 30 s")
            time.sleep(0.05)
        yield Orthanc(aet=aet, dicom_port=dicom_port, http_port=http_port, client=client)
    finally:
        client.close()
        stop_process(proc, timeout=15)
        log.close()


@dataclass
class StoreSCP:
    """A running DCMTK storescp writing what it receives into ``folder``."""

    aet: str
    port: int
    folder: Path
    proc: subprocess.Popen[bytes]


def written_uids(folder: Path, keyword: str = "SOPInstanceUID") -> set[str]:
    """``keyword`` of every instance a receiver has written whole into ``folder``: storescp
    writes a file in place, so one being written (no header yet, or part of it) is left for
    the next look."""
    uids = set()
    for path in folder.iterdir():
        try:
            uids.add(str(dcmread(path, stop_before_pixels=True).get(keyword)))
        except (InvalidDicomError, EOFError, OSError):
            continue
    return uids


@contextmanager
def run_storescp(folder: Path, aet: str = "STORESCP", *extra_args: str) -> Iterator[StoreSCP]:
    """Start DCMTK's storescp (bit-preserving, accepting every storage SOP class)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = ["storescp", "-aet", aet, "+B", "-od", str(folder), "-pm", "+xa", *extra_args, str(port)]
    proc = subprocess.Popen(
        args, env=nodelay_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for_port(port, proc=proc)
        yield StoreSCP(aet=aet, port=port, folder=folder, proc=proc)
    finally:
        stop_process(proc)


@dataclass
class Gateway:
    """A running ``pacs-ai serve`` (its own process group) with JSON logs in ``log_path``."""

    port: int
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log events written so far (optionally only those called ``name``)."""
        # Several processes share the log file, and a logger writes an event and its newline
        # separately, so events are decoded one after another rather than line by line.
        text = self.log_path.read_text(errors="replace")
        decoder = json.JSONDecoder()
        out, pos = [], text.find("{")
        while pos != -1:
            try:
                event, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                pos = text.find("{", pos + 1)
                continue
            if isinstance(event, dict) and (name is None or event.get("event") == name):
                out.append(event)
            pos = text.find("{", end)
        return out

    @property
    def admin_url(self) -> str:
        """Where the admin API of this gateway listens (from its start-up log event)."""
        return str(self.events("admin_listening")[0]["url"])

    def kill_hard(self) -> None:
        """SIGKILL the whole process group (supervisor and children), like a power cut."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@contextmanager
def run_gateway(
    data_dir: Path,
    *args: str,
    port: int | None = None,
    log_name: str = "serve.log",
    env: dict[str, str] | None = None,
    ready_event: str = "receiver_listening",
) -> Iterator[Gateway]:
    """Start ``pacs-ai serve`` on a free loopback port with JSON logs; SIGTERM it afterwards.
    It counts as started at its first ``ready_event`` log event (a ``--role work`` gateway has no
    receiver: ``job_runner_started``)."""
    import sys

    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / log_name
    log = log_path.open("ab")
    command = [sys.executable, "-m", "listener.cli", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--data-dir", str(data_dir), *args]
    proc = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=nodelay_env(
            **{
                "PACSAI_LOG_FORMAT": "json",
                "PACSAI_DISK_MIN_FREE_MB": "0",
                "PACSAI_ADMIN_PORT": "0",
                **(env or {}),
            }
        ),
        start_new_session=True,
    )
    gateway = Gateway(port=port, data_dir=data_dir, proc=proc, log_path=log_path)
    try:
        deadline = time.monotonic() + 30
        while not gateway.events(ready_event):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text()[-2000:]
                raise RuntimeError(f"pacs-ai serve did not start ({proc.poll()}): {tail}")
            time.sleep(0.05)
        yield gateway
    finally:
        if proc.poll() is None:
            stop_process(proc, timeout=20)
        log.close()


@contextmanager
def run_receiver(data_dir: Path, **overrides: Any) -> Iterator[tuple[Any, Any, Any]]:
    """The receiver alone, in this process, on a free loopback port: (settings, journal, spool)."""
    from listener.receive.scp import Receiver
    from listener.receive.server import start_server
    from listener.settings import load_settings
    from listener.store.journal import Journal
    from listener.store.spool import Spool

    settings = load_settings(
        None,
        host="127.0.0.1",
        port=free_port(),
        data_dir=data_dir,
        disk_min_free_mb=0,
        **overrides,
    )
    spool = Spool(settings.spool_dir, settings.quarantine_dir)
    journal = Journal(settings.journal_database)
    server = start_server(settings, Receiver(settings, spool, journal))
    try:
        yield settings, journal, spool
    finally:
        server.shutdown()
        deadline = time.monotonic() + 10
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.01)
        journal.close()


def embedding_count(gateway: Gateway) -> int:
    """How many MedImageInsight embeddings the gateway's journal holds."""
    from listener.store.embeddings import EmbeddingStore

    store = EmbeddingStore(gateway.data_dir / "journal.sqlite")
    try:
        return store.count()
    finally:
        store.close()
