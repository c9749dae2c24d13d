"""The job engine (listener/serve/engine.py) in one process, on a real DBOS over SQLite: due jobs
are queued once each however often the feeder runs, in priority order, never more of them
running at once than the model's concurrency; the workflow ids name their jobs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from spooled import schedule_job

from listener.serve import engine
from listener.settings import Settings, load_settings
from listener.store.jobs import JobStore


class RecordingHost:
    """Runs no job: records which job each workflow ran, how many ran at once, and holds each
    for ``hold_s``."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.ran: list[int] = []
        self.delivered: list[str] = []
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def run(self, job_id: int) -> str:
        with self._lock:
            self.ran.append(job_id)
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.hold_s)
        with self._lock:
            self.running -= 1
        return "COMPLETED"

    def deliver(self, destination: str) -> int:
        with self._lock:
            self.delivered.append(destination)
        time.sleep(self.hold_s)
        return 1


def _settings(tmp_path: Path) -> Settings:
    return load_settings(
        None,
        data_dir=tmp_path,
        poll_interval_s=0.05,
        jobs_per_runner=8,
        models={"cxrreportgen": {"concurrency": 2}},
        destinations={
            name: {"ae_title": name.upper(), "host": "127.0.0.1", "port": 104}
            for name in ("pacs", "archive")
        },
    )


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[tuple[engine.Engine, JobStore, RecordingHost]]:
    """DBOS launched on ``engine.sqlite`` beside a fresh journal, with a recording host."""
    settings = _settings(tmp_path)
    engine.migrate(settings)
    host = RecordingHost(hold_s=0.3)
    engine.set_host(host)
    runner = engine.Engine(settings, "test-host:1")
    runner.launch()
    try:
        yield runner, JobStore(settings.journal_database), host
    finally:
        runner.stop(5)
        engine.set_host(None)


def _wait(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_due_jobs_run_once_each_in_priority_order_within_the_model_limit(
    launched: tuple[engine.Engine, JobStore, RecordingHost],
) -> None:
    """Six due jobs of one model, concurrency 2, fed again and again while they run: each runs
    once, two at a time, the highest priorities first; the queue never holds more than two
    waiting jobs (the rest wait in the job table)."""
    runner, jobs, host = launched
    ids = [schedule_job(jobs, f"task-{index}", priority=index) for index in range(6)]
    most_waiting = 0
    deadline = time.monotonic() + 30
    while len(host.ran) < len(ids) or host.running:
        assert time.monotonic() < deadline, "timed out"
        runner.feed(jobs.due(1.0, engine.FEED_BATCH))
        waiting = [s for s in runner.active() if s.status == "ENQUEUED"]
        most_waiting = max(most_waiting, len(waiting))
        for job_id in list(host.ran):  # what ran is done: no longer due
            job = jobs.claim("test-host:1", 1.0, 60.0, job_id=job_id)
            if job is not None and job.lease is not None:
                jobs.complete(job.lease, [], 1.0)
        time.sleep(0.05)
    assert sorted(host.ran) == sorted(ids)  # each once
    assert host.most == 2  # the model's concurrency, though the runner may run eight
    assert most_waiting <= 2
    # two at a time, the highest priorities first
    assert [set(host.ran[i : i + 2]) for i in (0, 2, 4)] == [
        set(ids[4:6]),
        set(ids[2:4]),
        set(ids[0:2]),
    ]


def test_fresh_work_goes_to_a_less_busy_peer_and_waits_no_longer_than_a_poll(
    launched: tuple[engine.Engine, JobStore, RecordingHost],
) -> None:
    """With an idle job runner beside it, a runner that already runs a job leaves the next one
    queued for that peer (a study's two jobs then run in two processes); a job left waiting
    longer than a poll (0.05 s here) is started by whoever feeds next, so a peer that never
    takes it holds nothing up."""
    runner, jobs, host = launched
    host.hold_s = 2.0
    first, second = (schedule_job(jobs, f"task-{n}") for n in range(2))
    runner.feed(jobs.due(1.0, engine.FEED_BATCH), peers=["idle-peer:9"])
    _wait(lambda: host.running == 1)
    waiting = [s for s in runner.active() if s.status == "ENQUEUED"]
    assert [engine.job_id_of(s.workflow_id) for s in waiting] == [second]
    assert host.ran == [first]
    time.sleep(0.1)  # longer than a poll
    runner.feed(jobs.due(1.0, engine.FEED_BATCH), peers=["idle-peer:9"])
    _wait(lambda: host.running == 2)
    assert sorted(host.ran) == [first, second]


def test_a_job_not_due_is_not_queued(
    launched: tuple[engine.Engine, JobStore, RecordingHost],
) -> None:
    """A job scheduled for later stays out of the engine until it is due."""
    runner, jobs, _host = launched
    schedule_job(jobs, "later")
    assert runner.feed(jobs.due(-1.0, engine.FEED_BATCH)) == 0  # scheduled at 0.0
    assert runner.active() == []


def test_one_delivery_run_per_destination_at_a_time(
    launched: tuple[engine.Engine, JobStore, RecordingHost],
) -> None:
    """Destinations with due sends get one delivery run each, however often they are fed while
    it is queued or running; one the settings no longer name goes to the general queue."""
    runner, _jobs, host = launched
    fed = [runner.feed_sends(["archive", "pacs", "gone"]) for _ in range(3)]
    assert fed == [3, 0, 0]
    _wait(lambda: len(host.delivered) == 3)
    assert sorted(host.delivered) == ["archive", "gone", "pacs"]
    _wait(lambda: not runner.active(engine.SEND_PREFIX))
    assert runner.feed_sends(["pacs"]) == 1  # the run ended: the next one may start


def test_finished_workflows_are_trimmed_after_an_hour(
    launched: tuple[engine.Engine, JobStore, RecordingHost],
) -> None:
    """The engine's tables keep finished workflows an hour; the job table keeps the history."""
    runner, _jobs, host = launched
    runner.feed_sends(["pacs"])
    _wait(lambda: host.delivered == ["pacs"] and not runner.active(engine.SEND_PREFIX))
    assert runner.trim(time.time()) == 0  # finished just now
    assert runner.trim(time.time() + engine.FINISHED_KEEP_S + 60) == 1
    assert runner.trim(time.time() + engine.FINISHED_KEEP_S + 60) == 0


def test_workflow_ids_name_their_jobs() -> None:
    """The orphan sweep and the feeder read the job id from the workflow id."""
    assert engine.job_id_of("job-42-0123abcd") == 42
    assert engine.job_id_of("job-x-1") is None
    assert engine.job_id_of("other-42") is None


def test_engine_priority_runs_the_higher_job_priority_first() -> None:
    """DBOS runs the lowest number first, within its range."""
    assert engine.engine_priority(30) < engine.engine_priority(0) < engine.engine_priority(-5)
    assert engine.engine_priority(10**12) == 1
    assert engine.engine_priority(-(10**12)) == 2**31 - 1


def test_engine_tables_are_a_sibling_file_on_sqlite(tmp_path: Path) -> None:
    """DBOS's writers do not share the journal's SQLite file."""
    settings = _settings(tmp_path)
    assert engine.engine_url(settings) == f"sqlite:///{(tmp_path / 'engine.sqlite').resolve()}"


def test_engine_transactions_on_sqlite_hold_the_write_lock_from_their_first_read(
    tmp_path: Path,
) -> None:
    """A transaction that only read so far (the dequeue's count of running workflows) already
    keeps every other transaction out: the second one starts after the first commits. With the
    driver's own IMMEDIATE mode the read would run outside any lock and both would go ahead."""
    sql = engine.sqlite_engine(f"sqlite:///{tmp_path / 'e.sqlite'}")
    with sql.begin() as setup:
        setup.exec_driver_sql("CREATE TABLE t (n INTEGER)")
    order: list[str] = []

    def second() -> None:
        with sql.begin() as other:
            order.append("second began")
            other.exec_driver_sql("SELECT count(*) FROM t").fetchall()

    with sql.begin() as first:
        first.exec_driver_sql("SELECT count(*) FROM t").fetchall()
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        order.append("first committing")
    thread.join(10)
    sql.dispose()
    assert order == ["first committing", "second began"]
