"""A model outage through `pacs-ai serve`: storescu sends, the MedImageInsight endpoint is down
(refusing connections, throttling with 429 + Retry-After, answering 503), the job waits and
completes when the endpoint is back (the emulator started late on the configured port);
/readyz names the model while its breaker is open. Past the configured age the job fails with
its last cause, shown in `jobs list` and the dashboard, and `jobs retry` completes it.

The outages here last 15 s (not the 45-60 s of a real incident) against a circuit reset of 2 s
and a first job backoff of 1 s: the same mechanism, at a pace that keeps the test short.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from factory import ct_series, write_series
from peers import Gateway, free_port, nodelay_env, run_gateway, wait_for

from listener.asgi import BackgroundServer
from listener.emulator import create_app
from listener.settings import EmulatorSettings
from listener.store.jobs import forbidden_transitions

pytestmark = pytest.mark.integration

PACS_AI = [sys.executable, "-m", "listener.cli"]
OUTAGE_S = 15.0
RULES = """
rules:
  - name: classify-all
    match: {attribute: Rows, present: true}
    tasks:
      - {name: classify, model: medimageinsight, labels: [chest x-ray, head CT]}
"""


def _env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    prefix = "PACSAI_MODELS__MEDIMAGEINSIGHT__"
    return {
        "PACSAI_RULES_FILE": str(rules),
        f"{prefix}ENDPOINT": f"http://127.0.0.1:{port}/medimageinsight/score",
        f"{prefix}RETRIES": "1",
        f"{prefix}CIRCUIT_FAILURES": "2",
        f"{prefix}CIRCUIT_RESET_S": "2",
        f"{prefix}TIMEOUT_S": "10",
        "PACSAI_JOB_RETRY_BASE_S": "1",
        "PACSAI_JOB_RUNNERS": "1",
        **extra,
    }


def _send(gateway: Gateway, folder: Path) -> str:
    series = ct_series(1, body_part="CHEST")
    files = write_series(series, folder)
    subprocess.run(
        ["storescu", "-aet", "MODALITY", "-aec", "PACSAI", "127.0.0.1", str(gateway.port)]
        + [str(p) for p in files],
        check=True,
        env=nodelay_env(),
        timeout=60,
    )
    return str(series[0].StudyInstanceUID)


def _cli(gateway: Gateway, *args: str) -> str:
    result = subprocess.run(
        [*PACS_AI, *args, "--data-dir", str(gateway.data_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout


def _job(gateway: Gateway, study_uid: str) -> dict[str, Any] | None:
    listed = json.loads(_cli(gateway, "jobs", "list", "--json"))["jobs"]
    mine = [job for job in listed if job["study_uid"] == study_uid]
    return max(mine, key=lambda job: int(job["id"])) if mine else None


def _wait(what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
    """:func:`peers.wait_for` with this file's shorter default."""
    return wait_for(what, check, timeout)


def _mi_readiness(gateway: Gateway) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{gateway.admin_url}/readyz", timeout=10).json()
    return dict(body["models"]["medimageinsight"])


def _states(gateway: Gateway, job_id: int) -> list[str]:
    """The job's UPS states as `jobs show` prints its timeline (one tab-separated line each)."""
    lines = _cli(gateway, "jobs", "show", str(job_id)).splitlines()
    timeline = [line.split("\t") for line in lines if line.count("\t") >= 2]
    return [fields[1] for fields in timeline if fields[0] != "send"]


def _completes_after_outage(gateway: Gateway, study_uid: str, job_is_waiting: bool) -> None:
    done = _wait(
        "the job to complete",
        lambda: (
            (_job(gateway, study_uid) or {}).get("state") == "COMPLETED"
            and _job(gateway, study_uid)
        ),
    )
    states = _states(gateway, int(done["id"]))
    assert forbidden_transitions(states) == [] and states[-1] == "COMPLETED"
    if job_is_waiting:
        assert states.count("IN PROGRESS") >= 2  # it waited: several runs, no way back
    assert "SCHEDULED" not in states[1:]


def test_the_job_survives_refused_connections_throttling_and_503(tmp_path: Path) -> None:
    """Refused connections for 15 s (endpoint started late), then 429 + Retry-After 5 s for
    15 s, then 503 for 15 s: each study's job waits, IN PROGRESS, and completes; /readyz names
    the model while connections are refused and while it answers 503, and not after."""
    port = free_port()
    env = _env(tmp_path, port)
    with run_gateway(tmp_path / "var", "--quiet-period", "1", env=env) as gateway:
        first = _send(gateway, tmp_path / "one")
        started = time.monotonic()
        down = _wait("/readyz to name the model", lambda: not _mi_readiness(gateway)["available"])
        assert "ConnectError" in (_mi_readiness(gateway)["reason"] or "")
        waiting = _job(gateway, first)
        assert waiting is not None and waiting["state"] == "IN PROGRESS"
        assert "ConnectError" in (waiting["last_error"] or "") and down
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))
        with BackgroundServer(create_app(EmulatorSettings()), port=port):
            _completes_after_outage(gateway, first, job_is_waiting=True)
            _wait("/readyz to clear", lambda: _mi_readiness(gateway)["available"])
        for status, retry_after in ((429, 5.0), (503, None)):
            faulty = EmulatorSettings(
                fault_rate=1.0,
                fault_statuses=[status],
                retry_after_s=retry_after,
                fault_for_s=OUTAGE_S,
            )
            with BackgroundServer(create_app(faulty), port=port) as server:
                study = _send(gateway, tmp_path / str(status))
                if status == 503:
                    reason = _wait(
                        "/readyz to name the model",
                        lambda: _mi_readiness(gateway)["reason"],
                    )
                    assert "503 from medimageinsight endpoint" in reason
                _completes_after_outage(gateway, study, job_is_waiting=True)
                seen = httpx.get(f"{server.url}/_emulator/stats").json()
                # retried through the outage, then answered: the image, and the label texts
                # unless this job runner kept them from an earlier study (infer.clients)
                assert seen["faults"] >= 2 and seen["answered"] >= 1


def test_past_its_age_the_job_fails_with_its_cause_and_jobs_retry_completes_it(
    tmp_path: Path,
) -> None:
    """With job_max_age_s 8 and the endpoint down, the job is CANCELED naming the age and the
    connection error, in `jobs list` and on the dashboard; with the endpoint back,
    `jobs retry` makes a new job that references it and completes; neither job's `jobs show`
    timeline holds a forbidden UPS transition."""
    port = free_port()
    env = _env(tmp_path, port, PACSAI_JOB_MAX_AGE_S="8")
    with run_gateway(tmp_path / "var", "--quiet-period", "1", env=env) as gateway:
        study = _send(gateway, tmp_path / "one")
        failed = _wait(
            "the job to give up",
            lambda: (j := _job(gateway, study)) and j["state"] == "CANCELED" and j,
        )
        cause = failed["last_error"]
        assert cause.startswith("gave up after waiting") and "ConnectError" in cause
        assert "ConnectError" in _cli(gateway, "jobs", "list")
        dashboard = httpx.get(f"{gateway.admin_url}/", timeout=10).text
        assert "gave up after waiting" in dashboard and "ConnectError" in dashboard
        with BackgroundServer(create_app(EmulatorSettings()), port=port):
            out = _cli(gateway, "jobs", "retry", str(failed["id"]))
            assert f"job {failed['id']}: retried as job" in out
            done = _wait(
                "the retried job to complete",
                lambda: (j := _job(gateway, study)) and j["state"] == "COMPLETED" and j,
            )
        shown = json.loads(_cli(gateway, "jobs", "show", str(done["id"])).split("\n}\n")[0] + "\n}")
        assert shown["retry_of"] == failed["id"] and done["id"] != failed["id"]
        old_states = _states(gateway, int(failed["id"]))
        assert old_states[-1] == "CANCELED" and "IN PROGRESS" in old_states
        for job_id in (failed["id"], done["id"]):
            assert forbidden_transitions(_states(gateway, int(job_id))) == []
