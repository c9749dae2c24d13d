"""The commands' arguments and reading commands, in-process: one-line errors with exit status 2
for bad arguments, no journal created by a command that only reads, defaults in the help, and
``studies`` showing the stage the admin API shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from listener.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from listener.cli.main import main
from listener.store.jobs import JobStore
from listener.store.journal import InstanceRecord, Journal


def _one_line_error(capsys: pytest.CaptureFixture[str], *names: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for name in names:
        assert name in err
    return err


@pytest.mark.parametrize(
    ("argv", "argument"),
    [
        (["echo", "127.0.0.1", "70000"], "port"),
        (["echo", "127.0.0.1", "0"], "port"),
        (["send", "127.0.0.1", "99999", "x.dcm"], "port"),
        (["jobs", "list", "--state", "FAILED"], "--state"),
        (["similar", "1.2.3", "--top", "0"], "--top"),
        (["similar", "1.2.3", "--top", "-1"], "--top"),
        (["serve", "--port", "70000"], "--port"),
        (["serve", "--log-format", "xml"], "--log-format"),
    ],
)
def test_bad_argument_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], argument: str
) -> None:
    """An out-of-range port, an unknown job state or a --top under 1 ends with exit status 2 and
    one line naming the argument, before anything runs (no journal is created)."""
    data_dir = tmp_path / "data"
    if argv[0] in {"jobs", "similar", "serve"}:
        argv = [*argv, "--data-dir", str(data_dir)]
    assert main(argv) == EXIT_USAGE
    _one_line_error(capsys, argument)
    assert not data_dir.exists()


def test_job_state_is_accepted_in_any_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--state in_progress`` means IN PROGRESS: the parser normalises it."""
    JobStore(tmp_path / "journal.sqlite")
    assert main(["jobs", "list", "--state", "in_progress", "--data-dir", str(tmp_path)]) == EXIT_OK
    assert capsys.readouterr().out.startswith("ID\tSTATE")


@pytest.mark.parametrize(
    "argv",
    [
        ["jobs", "list"],
        ["jobs", "show", "1"],
        ["jobs", "retry", "1"],
        ["similar", "1.2.3"],
        ["studies"],
    ],
)
def test_reading_commands_never_create_a_journal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """With no journal at --data-dir, jobs, similar and studies fail (exit 1) naming --data-dir
    and leave nothing behind: an empty journal would hide the mistake."""
    data_dir = tmp_path / "elsewhere"
    assert main([*argv, "--data-dir", str(data_dir)]) == EXIT_FAILED
    _one_line_error(capsys, "--data-dir", str(data_dir / "journal.sqlite"))
    assert not data_dir.exists()


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["serve"], ["default 11112", "default 10.0", "default 8080", "default auto"]),
        (["echo"], ["(default: PACSAI-SCU)", "(default: PACSAI)", "(default: 30.0)"]),
        (["similar"], ["(default: 5)"]),
        (["jobs", "list"], ["default var"]),
    ],
)
def test_help_shows_the_defaults(
    capsys: pytest.CaptureFixture[str], argv: list[str], shown: list[str]
) -> None:
    """Every option's help says its default: the flag's own, or the setting it overrides."""
    assert main([*argv, "--help"]) == EXIT_OK
    text = " ".join(capsys.readouterr().out.split())
    for default in shown:
        assert default in text


def test_serve_has_admin_and_log_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Serve takes --admin-port and --log-format; a bad admin port is refused naming the setting."""
    argv = ["serve", "--data-dir", str(tmp_path), "--log-format", "json", "--admin-port", "70000"]
    assert main(argv) == EXIT_USAGE
    _one_line_error(capsys, "admin_port")


def _journal_with_canceled_job(path: Path) -> str:
    """A study released and dispatched whose only job was canceled (the model refused it)."""
    study = "1.2.826.0.1.3680043.8.498.1"
    journal = Journal(path)
    try:
        journal.record_instance(
            InstanceRecord(
                sop_instance_uid=f"{study}.1.1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                study_uid=study,
                series_uid=f"{study}.1",
                modality="CT",
                transfer_syntax="1.2.840.10008.1.2.1",
                path="spool/x.dcm",
                size=1,
                received_at=100.0,
                generation=0,
            ),
            quiet_period_s=10.0,
        )
        (released,) = journal.release_due_studies(200.0)
        assert journal.mark_dispatched(study, released.generation)
    finally:
        journal.close()
    jobs = JobStore(path)
    job_id = jobs.schedule(
        job_key=f"{study}:0:r:t",
        study_uid=study,
        generation=0,
        rule="r",
        task="t",
        payload={"model": "medimageparse"},
        priority=0,
        now=200.0,
    )
    assert jobs.cancel(job_id, 201.0, reason="model refused the input")
    return study


def test_studies_shows_the_stage_the_dashboard_shows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dispatched study whose job was canceled is "failed" in ``studies``, as in the admin API
    and the dashboard, not "dispatched"."""
    study = _journal_with_canceled_job(tmp_path / "journal.sqlite")
    assert main(["studies", "--data-dir", str(tmp_path)]) == EXIT_OK
    (line, total) = capsys.readouterr().out.strip().splitlines()
    assert f"study_uid={study}" in line and "stage=failed" in line
    assert "dispatched" not in line
    assert total == "1 studies"
    assert main(["studies", "--json", "--data-dir", str(tmp_path)]) == EXIT_OK
    assert '"stage": "failed"' in capsys.readouterr().out
