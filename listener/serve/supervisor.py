"""Process supervision for ``pacs-ai serve``.

The supervisor prepares the data folder (removes temporary files a crash left in ``spool/.tmp``,
closes association records left open, re-indexes spool files the journal lost), then runs:

* ``receive_processes`` receive processes, each a pynetdicom AE on the same port
  (``SO_REUSEPORT``: the kernel spreads new associations over them), so parallel associations
  use several cores and no worker CPU ever slows an association;
* one worker process running the assemble loop (:func:`listener.assemble.worker_loop`) with the
  pipeline's routing as its callback, and the outbox deliverer;
* ``workers`` job-runner processes (:mod:`listener.serve.loops`), each running several jobs at once;
* in the supervisor itself, the model emulator for models without an endpoint.

Children are started with the ``spawn`` method. A child that exits unexpectedly is restarted
after a backoff (1 s doubling to 30 s, reset once it has run for a minute). On SIGTERM or
SIGINT the supervisor asks every child to stop: receivers close their listening socket, let
in-flight associations finish for a grace period and then abort them; a C-STORE cut short leaves
only a temporary file, never a visible spool file.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from listener.admin import start_admin
from listener.assemble import worker_loop
from listener.emulator.server import emulator_if_needed
from listener.logging import configure_logging, get_logger
from listener.pipeline import build_pipeline, effective_rules
from listener.receive.admission import AssociationCounter
from listener.receive.scp import Receiver, start_server
from listener.serve.loops import recover_after_crash, run_deliverer, run_job_worker
from listener.serve.summary import log_startup_summary, startup_summary
from listener.settings import Settings
from listener.store.journal import Journal
from listener.store.spool import Spool, reindex

STOP_GRACE_S = 10.0
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0
_PR_SET_PDEATHSIG = 1


def prepare_data_dir(settings: Settings, now: float) -> None:
    """Start-up housekeeping before any child runs (see the module docstring)."""
    log = get_logger("service")
    spool = Spool(settings.spool_dir, settings.quarantine_dir)
    removed = spool.clean_temporary()
    journal = Journal(settings.journal_path)
    try:
        closed = journal.close_open_associations(ended="interrupted", now=now)
        added = reindex(spool, journal, quiet_period_s=settings.quiet_period_s, now=now)
    finally:
        journal.close()
    log.info("data_dir_ready", temp_removed=removed, associations_closed=closed, reindexed=added)


def backoff(failures: int) -> float:
    """Seconds to wait before the next restart after ``failures`` quick failures in a row."""
    return float(min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** max(0, failures - 1)))


# --- children ------------------------------------------------------------------------------


def _child_setup(settings: Settings, name: str) -> threading.Event:
    """Logging, death with the parent, and a stop event set by SIGTERM/SIGINT."""
    configure_logging(settings.log_level, settings.log_format)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: the supervisor's SIGTERM remains the way children stop
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        get_logger(name).info("child_stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return stop


def run_receiver(settings: Settings, slot: int, shared: Any) -> None:
    """Entry point of a receive process."""
    stop = _child_setup(settings, "receive")
    spool = Spool(
        settings.spool_dir, settings.quarantine_dir, min_free_mb=settings.disk_min_free_mb
    )
    journal = Journal(settings.journal_path)
    receiver = Receiver(settings, spool, journal, counter=AssociationCounter(shared, slot))
    server = start_server(settings, receiver, reuse_port=True)
    stop.wait()
    server.shutdown()  # stops accepting and closes the listening socket
    deadline = time.monotonic() + STOP_GRACE_S
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    for assoc in server.active_associations:
        assoc.abort()
    journal.close()


def run_worker(settings: Settings) -> None:
    """Entry point of the worker process: the assemble loop, whose callback plans each released
    study (route), and the outbox deliverer (send) in a thread beside it."""
    stop = _child_setup(settings, "worker")
    journal = Journal(settings.journal_path)
    pipeline = build_pipeline(settings, journal)
    deliverer = threading.Thread(
        target=run_deliverer, args=(pipeline, stop), name="deliverer", daemon=True
    )
    deliverer.start()
    try:
        worker_loop(
            journal,
            stop,
            on_ready=pipeline.on_study_ready,
            poll_interval_s=settings.poll_interval_s,
        )
    finally:
        deliverer.join(STOP_GRACE_S)
        journal.close()


def run_jobs(settings: Settings, emulator_url: str | None) -> None:
    """Entry point of a job-runner process (infer + convert)."""
    stop = _child_setup(settings, "jobs")
    run_job_worker(settings, emulator_url, stop)


# --- supervisor ----------------------------------------------------------------------------


@dataclass
class _Child:
    name: str
    target: Callable[..., None]
    args: tuple[Any, ...]
    process: Any = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    on_exit: Callable[[], None] = field(default=lambda: None)


class Supervisor:
    """Starts the children, restarts crashed ones with backoff, stops them on a signal."""

    def __init__(self, settings: Settings, emulator_url: str | None = None) -> None:
        self.settings = settings
        self.ctx = multiprocessing.get_context("spawn")
        self.stop = threading.Event()
        self.log = get_logger("service")
        count = settings.receive_processes
        self.shared = self.ctx.Array("i", count)
        self.children = [
            _Child(f"receive-{slot}", run_receiver, (settings, slot, self.shared))
            for slot in range(count)
        ]
        for slot, child in enumerate(self.children):
            child.on_exit = self._zero_slot(slot)
        self.children.append(_Child("worker", run_worker, (settings,)))
        self.children += [
            _Child(f"jobs-{index}", run_jobs, (settings, emulator_url))
            for index in range(settings.workers)
        ]

    def _zero_slot(self, slot: int) -> Callable[[], None]:
        def zero() -> None:
            self.shared[slot] = 0

        return zero

    def _start(self, child: _Child) -> None:
        child.process = self.ctx.Process(target=child.target, args=child.args, name=child.name)
        child.process.start()
        child.started_at = time.monotonic()
        child.restart_at = None
        self.log.info("child_started", child=child.name, pid=child.process.pid)

    def run(self) -> int:
        """Supervise until a stop signal; return the exit status."""
        for child in self.children:
            self._start(child)
        while not self.stop.is_set():
            sentinels = [c.process.sentinel for c in self.children if c.restart_at is None]
            multiprocessing.connection.wait(sentinels, timeout=0.5)
            if not self.stop.is_set():
                self._check_children(time.monotonic())
        self._stop_children()
        return 0

    def _check_children(self, now: float) -> None:
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._start(child)
                continue
            if child.process.is_alive():
                continue
            child.process.join()
            child.on_exit()
            healthy = now - child.started_at >= HEALTHY_AFTER_S
            child.failures = 1 if healthy else child.failures + 1
            delay = backoff(child.failures)
            child.restart_at = now + delay
            self.log.error(
                "child_exited",
                child=child.name,
                exitcode=child.process.exitcode,
                restart_in_s=delay,
            )

    def _stop_children(self) -> None:
        self.log.info("service_stopping")
        running = [c.process for c in self.children if c.restart_at is None]
        for process in running:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S + 5
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        self.log.info("service_stopped")


def serve(settings: Settings) -> int:
    """Run the gateway until SIGTERM/SIGINT; return the exit status.

    The rules are validated first (a bad file stops start-up with a ConfigError naming the rule
    and field). Models without an endpoint are served by the built-in emulator, started here on
    a loopback port and called by the job runners over real HTTP. The admin API (health,
    metrics, dashboard) runs in this process too. Before the children start, one log line per
    destination, per model (endpoint or emulator) and for where results go
    (:mod:`listener.serve.summary`).
    """
    rules = effective_rules(settings)
    now = time.time()
    prepare_data_dir(settings, now)
    recover_after_crash(settings, now)
    admin = start_admin(settings)
    try:
        with emulator_if_needed(settings) as emulator_url:
            log_startup_summary(
                get_logger("service"), startup_summary(settings, rules, emulator_url)
            )
            supervisor = Supervisor(settings, emulator_url)
            return _supervise(supervisor)
    finally:
        admin.stop()


def _supervise(supervisor: Supervisor) -> int:

    def _on_signal(signum: int, _frame: object) -> None:
        supervisor.log.info("signal_received", signal=signal.Signals(signum).name)
        supervisor.stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return supervisor.run()
