"""Roles: `pacs-ai serve --role receive` and `--role work` split the loop over processes that
share one journal, and the jobs of a work host that dies run on another long before their lease
runs out (the sweeper acts on the dead host's silent heartbeats).

Every peer is real: DCMTK storescu sends, storescp receives the results, the emulator answers
over loopback HTTP, and each role is its own `pacs-ai serve` process tree.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from peers import free_port, run_gateway, run_storescp, send_with_storescu, wait_for, written_uids
from pydicom import dcmread
from pydicom.data import get_testdata_file

from listener.store.jobs import JobState, JobStore

pytestmark = pytest.mark.integration

# The default rules give a chest CR three results: report SR, presentation state, classification.
CR_RESULTS = 3


def _env(storescp_port: int, **extra: str) -> dict[str, str]:
    return {
        "PACSAI_DESTINATIONS__PACS__AE_TITLE": "STORESCP",
        "PACSAI_DESTINATIONS__PACS__HOST": "127.0.0.1",
        "PACSAI_DESTINATIONS__PACS__PORT": str(storescp_port),
        "PACSAI_QUIET_PERIOD_S": "1",
        "PACSAI_EXECUTOR_TIMEOUT_S": "3",
        **extra,
    }


def _send_cr(port: int, folder: Path) -> str:
    source = get_testdata_file("RG1_UNCR.dcm")
    assert source is not None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cr.dcm"
    path.write_bytes(Path(source).read_bytes())
    send_with_storescu(port, [path], timeout=60)
    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _received(folder: Path) -> set[str]:
    return written_uids(folder)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _children(log: list[dict[str, object]]) -> list[str]:
    """The children a gateway started, each also named so in ``ps`` (``/proc/PID/comm``)."""
    for event in log:
        comm = Path(f"/proc/{event['pid']}/comm").read_text().strip()
        assert comm == str(event["child"])
    return sorted(str(e["child"]) for e in log)


def test_receive_and_work_roles_split_the_loop(tmp_path: Path) -> None:
    """A receive host takes the study in and runs nothing else; a work host on the same journal
    opens no DICOM port, releases the study, runs its jobs and sends every result once."""
    data = tmp_path / "data"
    with run_storescp(tmp_path / "results", "STORESCP") as results:
        env = _env(results.port)
        with run_gateway(data, "--role", "receive", log_name="receive.log", env=env) as receiver:
            study = _send_cr(receiver.port, tmp_path / "in")
            assert _children(receiver.events("child_started")) == ["receive-0", "receive-1"]
            work_port = free_port()
            with run_gateway(
                data,
                "--role",
                "work",
                port=work_port,
                log_name="work.log",
                env=env,
                ready_event="job_runner_started",
            ) as worker:
                assert _children(worker.events("child_started")) == [
                    "dispatcher",
                    "job-runner-0",
                    "job-runner-1",
                ]
                assert not _listening(work_port)
                wait_for(
                    "the CR's results at the receiving PACS",
                    lambda: len(_received(results.folder)) >= CR_RESULTS,
                    timeout=120,
                )
    assert len(_received(results.folder)) == CR_RESULTS
    jobs = JobStore(data / "journal.sqlite").list_jobs()
    assert {j.study_uid for j in jobs} == {study}
    assert {j.state for j in jobs} == {JobState.COMPLETED}


def test_jobs_of_a_dead_work_host_run_on_another_before_their_lease_ends(tmp_path: Path) -> None:
    """Work host A is killed (-9, its whole process tree) while its model calls hang; work host
    B takes its jobs within the executor timeout (3 s), though their leases last 10 minutes, and
    every result reaches the PACS exactly once."""
    data = tmp_path / "data"
    with run_storescp(tmp_path / "results", "STORESCP") as results:
        env = _env(results.port, PACSAI_JOB_LEASE_S="600")
        with run_gateway(data, "--role", "receive", log_name="receive.log", env=env) as receiver:
            with run_gateway(
                data,
                "--role",
                "work",
                "--executor-id",
                "host-a",
                port=free_port(),
                log_name="a.log",
                env={**env, "PACSAI_EMULATOR__LATENCY_MS": "600000"},
                ready_event="job_runner_started",
            ) as host_a:
                _send_cr(receiver.port, tmp_path / "in")
                jobs = JobStore(data / "journal.sqlite")
                wait_for(
                    "host A holding the CR's jobs",
                    lambda: (
                        [j for j in jobs.list_jobs() if j.lease_owner]
                        and all(
                            (j.lease_owner or "").startswith("host-a:") for j in jobs.list_jobs()
                        )
                    ),
                    timeout=60,
                )
                host_a.kill_hard()
            with run_gateway(
                data,
                "--role",
                "work",
                "--executor-id",
                "host-b",
                port=free_port(),
                log_name="b.log",
                env=env,
                ready_event="job_runner_started",
            ) as host_b:
                wait_for(
                    "the CR's results at the receiving PACS",
                    lambda: len(_received(results.folder)) >= CR_RESULTS,
                    timeout=120,
                )
                silent = host_b.events("executor_silent")
    assert len(_received(results.folder)) == CR_RESULTS
    assert silent and all(str(e["owner"]).startswith("host-a:") for e in silent)
    assert sum(int(str(e["jobs_released"])) for e in silent) >= 1
    done = JobStore(data / "journal.sqlite").list_jobs()
    assert {j.state for j in done} == {JobState.COMPLETED}
