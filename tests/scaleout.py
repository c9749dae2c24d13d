"""Several gateway hosts on this machine: HAProxy (``docker/haproxy.cfg``, the same file the
scale-out compose file uses) in front of ``pacs-ai serve --role receive`` processes, and
``--role work`` processes beside them, all on one journal."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from factory import chest_radiograph, write_series
from peers import Gateway, Orthanc, free_port, nodelay_env, run_gateway, stop_process
from pydicom import dcmread

ROOT = Path(__file__).resolve().parent.parent
HAPROXY_CFG = ROOT / "docker" / "haproxy.cfg"


def haproxy_env(bind_port: int, receiver_ports: list[int]) -> dict[str, str]:
    """The variables ``docker/haproxy.cfg`` reads, for receivers on loopback."""
    env = {"DICOM_BIND": f"127.0.0.1:{bind_port}", "CHECK_INTERVAL": "2s"}
    for index, port in enumerate(receiver_ports, start=1):
        env[f"RECEIVER_{index}"] = f"127.0.0.1:{port}"
    return env


def result_count(pacs: Orthanc, study_uid: str) -> int:
    """How many instances Orthanc holds in the study ``study_uid`` (the results sent to it)."""
    studies = pacs.find("Study", {"StudyInstanceUID": study_uid})
    if not studies:
        return 0
    return len(pacs.get(f"/studies/{studies[0]['ID']}/instances"))


def chest_studies(workdir: Path, name: str, count: int) -> tuple[list[Path], list[str]]:
    """``count`` synthetic chest CRs, each its own study (``name-N``): their files and study
    UIDs."""
    paths = [
        write_series([chest_radiograph(f"{name}-{index}")], workdir / f"cr{index}")[0]
        for index in range(count)
    ]
    return paths, [str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in paths]


def pacs_env(pacs: Orthanc) -> dict[str, str]:
    """The settings (environment) of Orthanc as destination ``pacs``."""
    return {
        "PACSAI_DESTINATIONS__PACS__AE_TITLE": pacs.aet,
        "PACSAI_DESTINATIONS__PACS__HOST": "127.0.0.1",
        "PACSAI_DESTINATIONS__PACS__PORT": str(pacs.dicom_port),
    }


def _echo(port: int) -> bool:
    result = subprocess.run(
        ["echoscu", "-aec", "PACSAI", "-to", "5", "127.0.0.1", str(port)],
        capture_output=True,
        env=nodelay_env(),
        check=False,
    )
    return result.returncode == 0


@contextmanager
def run_haproxy(log_path: Path, receiver_ports: list[int]) -> Iterator[int]:
    """HAProxy on a free loopback port in front of the receivers; yields its port once a C-ECHO
    through it is answered."""
    port = free_port()
    env = nodelay_env(**haproxy_env(port, receiver_ports))
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            ["haproxy", "-db", "-f", str(HAPROXY_CFG)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            deadline = time.monotonic() + 30
            while not _echo(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"haproxy did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.2)
            yield port
        finally:
            stop_process(proc)


@dataclass
class Cluster:
    """Receivers behind HAProxy (``port``) and work hosts, sharing one journal."""

    port: int
    receivers: list[Gateway]
    workers: list[Gateway]
    env: dict[str, str]


def receiver_args(index: int) -> list[str]:
    """The ``pacs-ai serve`` flags of receive host ``index`` (to start it again after a kill)."""
    return ["--role", "receive", "--executor-id", f"receive-{index}"]


@contextmanager
def run_cluster(
    tmp_path: Path, env: dict[str, str], *, receivers: int = 2, workers: int = 2
) -> Iterator[Cluster]:
    """``receivers`` receive hosts behind HAProxy and ``workers`` work hosts (executor ids
    ``receive-N`` and ``work-N``) with the settings in ``env``; stopped in reverse order."""
    data = tmp_path / "data"
    with ExitStack() as stack:
        receive = [
            stack.enter_context(
                run_gateway(data, *receiver_args(index), log_name=f"receive-{index}.log", env=env)
            )
            for index in range(1, receivers + 1)
        ]
        work = [
            stack.enter_context(
                run_gateway(
                    data,
                    "--role",
                    "work",
                    "--executor-id",
                    f"work-{index}",
                    port=free_port(),
                    log_name=f"work-{index}.log",
                    env=env,
                    ready_event="job_runner_started",
                )
            )
            for index in range(1, workers + 1)
        ]
        port = stack.enter_context(
            run_haproxy(tmp_path / "haproxy.log", [gateway.port for gateway in receive])
        )
        yield Cluster(port=port, receivers=receive, workers=work, env=env)
