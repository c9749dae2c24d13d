"""Process supervision for ``pacs-ai serve``.

The supervisor prepares the data folder (removes temporary files a crash left in ``spool/.tmp``,
closes association records left open, re-indexes spool files the journal lost), then runs:

* ``receive_processes`` receive processes, each a pynetdicom AE accepting on the one listening
  socket the supervisor opened before anything else (so a second gateway, or another program, on
  the port stops start-up with an error naming ``port`` instead of sharing it), so parallel
  associations use several cores and no job runner's CPU ever slows an association;
* one dispatcher process running the assemble loop (:func:`listener.assemble.release_loop`)
  with the route stage as its callback, the retention purger, the sweeper and, with
  ``spool_url: s3://...``, the spool uploader;
* ``job_runners`` job-runner processes (:mod:`listener.serve.loops`), each running several jobs
  at once and the outbox's deliveries, as the job engine hands them out
  (:mod:`listener.serve.engine`);
* in the supervisor itself, the model emulator for models without an endpoint.

What a host runs is its ``role``: ``receive`` runs only the receive processes (no release, no
jobs, no emulator), ``work`` only the dispatcher and the job runners (no DICOM port), ``all``
(the default) everything. Every child writes a heartbeat under its lease owner name
(:mod:`listener.store.executors`), and every dispatcher sweeps the processes that went silent,
so the jobs of a host that died run again on another within ``executor_timeout_s``.

Children are started with the ``spawn`` method. A child that exits unexpectedly is restarted
after a backoff (1 s doubling to 30 s, reset once it has run for a minute); its quick exits in a
row and its last error (written by the child to ``<data_dir>/run/<name>.error``) are recorded in
the journal (:class:`~listener.store.records.SupervisedRecords`), and ``/readyz`` is red while
a child is crash-looping. On SIGTERM or
SIGINT the supervisor asks every child to stop: receivers close their listening socket, let
in-flight associations finish for a grace period and then abort them; a C-STORE cut short leaves
only a temporary file, never a visible spool file.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from listener.admin import start_admin
from listener.assemble import release_loop
from listener.emulator.server import emulator_if_needed
from listener.logging import configure_logging, get_logger
from listener.pipeline import build_pipeline
from listener.receive.admission import AssociationCounter
from listener.receive.scp import Receiver
from listener.receive.server import open_listeners, start_server
from listener.route.load import effective_rules
from listener.serve.loops import (
    JOB_RUNNER,
    recover_after_crash,
    ringing_after,
    run_job_runner,
    run_purger,
    run_sweeper,
    run_uploader,
)
from listener.serve.summary import log_startup_summary, startup_summary
from listener.serve.syslog import run_shipper
from listener.settings import Settings
from listener.store.audit import AuditTrail
from listener.store.db import DatabaseError
from listener.store.executors import ExecutorBeat, Executors, owner_name, run_heartbeat
from listener.store.journal import Journal
from listener.store.objects import check_spool_bucket
from listener.store.records import SupervisedProcess, SupervisedRecords
from listener.store.spool import Spool, reindex
from listener.store.uploads import shared_spool
from listener.timing import backoff_delay

STOP_GRACE_S = 10.0
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15  # the thread name ps, top and /proc/PID/comm show, 15 bytes at most


def prepare_data_dir(settings: Settings, now: float) -> None:
    """Start-up housekeeping before any child runs (see the module docstring)."""
    log = get_logger("service")
    check_spool_bucket(settings)
    spool = Spool(settings.spool_dir, settings.quarantine_dir)
    removed = spool.clean_temporary()
    journal = Journal(settings.journal_database)
    try:
        # With other receive hosts on the same journal, their open associations are live.
        closed = (
            journal.close_open_associations(ended="interrupted", now=now)
            if settings.role == "all"
            else 0
        )
        added = reindex(spool, journal, quiet_period_s=settings.quiet_period_s, now=now)
    finally:
        journal.close()
    log.info("data_dir_ready", temp_removed=removed, associations_closed=closed, reindexed=added)


# --- children ------------------------------------------------------------------------------


def _prctl(option: int, value: int | ctypes.c_char_p) -> None:
    """Linux's ``prctl(option, value)`` for this process; nothing where there is no glibc."""
    with suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value)


def _child_setup(settings: Settings, name: str) -> threading.Event:
    """Logging, death with the parent, a stop event set by SIGTERM/SIGINT, and the heartbeat
    (:mod:`listener.store.executors`) in a thread until the stop event."""
    configure_logging(settings.log_level, settings.log_format)
    # Not on Linux the supervisor's SIGTERM remains the way children stop.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        get_logger(name).info("child_stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    _start_heartbeat(settings, name, stop)
    return stop


def _start_heartbeat(settings: Settings, name: str, stop: threading.Event) -> None:
    executors = Executors(settings.journal_database)
    started_at = time.time()
    owner = owner_name(settings.executor)

    def beat(now: float) -> ExecutorBeat:
        return ExecutorBeat(
            owner, settings.executor, name, settings.role, os.getpid(), started_at, now
        )

    threading.Thread(
        target=run_heartbeat,
        args=(executors, beat, stop, settings.executor_timeout_s / 3, time.time),
        name="heartbeat",
        daemon=True,
    ).start()


def _run_child(name: str, error_file: Path, target: Callable[..., None], *args: Any) -> None:
    """Run a child's entry point under its name in ``ps`` and ``top`` (``receive-0``,
    ``job-runner-1``: which child uses the CPU); an exception is written to ``error_file`` (one
    line, for the supervisor's record and ``/readyz``) and re-raised."""
    _prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]))  # elsewhere: the interpreter's
    try:
        target(*args)
    except Exception as exc:
        error_file.parent.mkdir(parents=True, exist_ok=True)
        error_file.write_text(f"{type(exc).__name__}: {exc}"[:500])
        raise


def run_receiver(
    settings: Settings, slot: int, shared: Any, listeners: list[socket.socket]
) -> None:
    """Entry point of a receive process, accepting on the supervisor's listening sockets (the
    plain port unless it is 0, then the DICOM TLS port when configured)."""
    stop = _child_setup(settings, "receive")
    spool = Spool(
        settings.spool_dir,
        settings.quarantine_dir,
        min_free_mb=settings.disk_min_free_mb,
        shared=shared_spool(settings),
    )
    journal = Journal(settings.journal_database)
    audit = AuditTrail.open(settings)
    receiver = Receiver(
        settings, spool, journal, counter=AssociationCounter(shared, slot), audit=audit
    )
    if settings.role == "receive" and slot == 0:  # a host of receivers has no dispatcher
        threading.Thread(
            target=run_uploader, args=(settings, stop), name="spool-uploader", daemon=True
        ).start()
    tls_flags = ([False] if settings.port else []) + ([True] if settings.tls.enabled else [])
    servers = [
        start_server(settings, receiver, listener=listener, tls=tls)
        for listener, tls in zip(listeners, tls_flags, strict=True)
    ]
    stop.wait()
    for server in servers:
        server.shutdown()  # stops accepting and closes the listening socket
    deadline = time.monotonic() + STOP_GRACE_S
    while any(s.active_associations for s in servers) and time.monotonic() < deadline:
        time.sleep(0.05)
    for server in servers:
        for assoc in server.active_associations:
            assoc.abort()
    journal.close()
    audit.close()


def dispatcher_main(settings: Settings) -> None:
    """Entry point of the dispatcher process: the assemble loop, whose callback plans each released
    study (route), and the retention purger, the sweeper and the spool uploader in threads beside
    it."""
    stop = _child_setup(settings, "dispatcher")
    journal = Journal(settings.journal_database)
    pipeline = build_pipeline(settings, journal)
    purger = threading.Thread(target=run_purger, args=(pipeline, stop), name="purger", daemon=True)
    purger.start()
    sweeper = threading.Thread(
        target=run_sweeper,
        args=(pipeline, Executors(settings.journal_database), stop),
        name="sweeper",
        daemon=True,
    )
    sweeper.start()
    # The uploader runs where the received files are: here on a single host, in the first
    # receive process of a receive host (role receive).
    spool_uploader = threading.Thread(
        target=run_uploader, args=(settings, stop), name="spool-uploader", daemon=True
    )
    if settings.role == "all":
        spool_uploader.start()
    shipper = None
    if settings.audit.syslog_host is not None and pipeline.audit is not None:
        shipper = threading.Thread(
            target=run_shipper,
            args=(pipeline.audit.log, settings.audit, stop),
            name="audit-shipper",
            daemon=True,
        )
        shipper.start()
    try:
        release_loop(
            journal,
            stop,
            on_ready=ringing_after(pipeline.router.on_study_ready, settings.data_dir),
            poll_interval_s=settings.poll_interval_s,
            max_wait_s=settings.max_study_wait_s,
        )
    finally:
        purger.join(STOP_GRACE_S)
        sweeper.join(STOP_GRACE_S)
        if spool_uploader.is_alive():
            spool_uploader.join(STOP_GRACE_S)
        if shipper is not None:
            shipper.join(STOP_GRACE_S)
        journal.close()


def job_runner_main(settings: Settings, emulator_url: str | None) -> None:
    """Entry point of a job-runner process (infer + convert)."""
    stop = _child_setup(settings, JOB_RUNNER)
    run_job_runner(settings, emulator_url, stop)


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

    def __init__(
        self,
        settings: Settings,
        emulator_url: str | None = None,
        listeners: list[socket.socket] | None = None,
    ) -> None:
        self.settings = settings
        self.ctx = multiprocessing.get_context("spawn")
        self.stop = threading.Event()
        self.log = get_logger("service")
        self.records = SupervisedRecords(settings.journal_database)
        count = settings.receive_processes if settings.receives else 0
        self.shared = self.ctx.Array("i", max(count, 1))
        self.listeners = listeners if listeners is not None else open_listeners(settings)
        self.children = [
            _Child(f"receive-{slot}", run_receiver, (settings, slot, self.shared, self.listeners))
            for slot in range(count)
        ]
        for slot, child in enumerate(self.children):
            child.on_exit = self._zero_slot(slot)
        if settings.works:
            self.children.append(_Child("dispatcher", dispatcher_main, (settings,)))
            self.children += [
                _Child(f"job-runner-{index}", job_runner_main, (settings, emulator_url))
                for index in range(settings.job_runners)
            ]

    def _zero_slot(self, slot: int) -> Callable[[], None]:
        def zero() -> None:
            self.shared[slot] = 0

        return zero

    def _error_file(self, child: _Child) -> Path:
        return self.settings.data_dir / "run" / f"{child.name}.error"

    def _start(self, child: _Child) -> None:
        error_file = self._error_file(child)
        error_file.unlink(missing_ok=True)
        child.process = self.ctx.Process(
            target=_run_child,
            args=(child.name, error_file, child.target, *child.args),
            name=child.name,
        )
        child.process.start()
        child.started_at = time.monotonic()
        child.restart_at = None
        self.log.info("child_started", child=child.name, pid=child.process.pid)

    def run(self) -> int:
        """Supervise until a stop signal; return the exit status."""
        self.records.clear()
        for child in self.children:
            self._start(child)
        while not self.stop.is_set():
            sentinels = [c.process.sentinel for c in self.children if c.restart_at is None]
            multiprocessing.connection.wait(sentinels, timeout=0.5)
            if not self.stop.is_set():
                self._check_children(time.monotonic())
        self._stop_children()
        for listener in self.listeners:
            listener.close()
        return 0

    def _check_children(self, now: float) -> None:
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._start(child)
                continue
            healthy = now - child.started_at >= HEALTHY_AFTER_S
            if child.process.is_alive():
                if healthy and child.failures:
                    child.failures = 0
                    self._record(child, None)
                continue
            child.process.join()
            child.on_exit()
            child.failures = 1 if healthy else child.failures + 1
            delay = backoff_delay(child.failures, BACKOFF_START_S, BACKOFF_MAX_S)
            child.restart_at = now + delay
            error = self._last_error(child)
            self._record(child, error)
            self.log.error(
                "child_exited",
                child=child.name,
                exitcode=child.process.exitcode,
                error=error,
                failures=child.failures,
                restart_in_s=delay,
            )

    def _last_error(self, child: _Child) -> str | None:
        try:
            return self._error_file(child).read_text().strip() or None
        except OSError:
            return None

    def _record(self, child: _Child, error: str | None) -> None:
        try:
            self.records.record(
                SupervisedProcess(
                    name=child.name,
                    failures=child.failures,
                    exitcode=child.process.exitcode if child.process else None,
                    last_error=error,
                    at=time.time(),
                )
            )
        except DatabaseError as exc:
            self.log.warning("child_not_recorded", child=child.name, error=str(exc))

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
    # First, before the data folder is touched: a second gateway on this port, or a taken
    # admin_port, stops here in one line.
    listeners = open_listeners(settings) if settings.receives else []
    admin = None
    try:
        admin = start_admin(settings)
        now = time.time()
        if settings.receives:
            prepare_data_dir(settings, now)
        if settings.works:
            recover_after_crash(settings, now)
        audit = AuditTrail.open(settings)
        audit.application(started=True)
        try:
            emulator = emulator_if_needed(settings) if settings.works else nullcontext(None)
            with emulator as emulator_url:
                log_startup_summary(
                    get_logger("service"), startup_summary(settings, rules, emulator_url)
                )
                supervisor = Supervisor(settings, emulator_url, listeners)
                return _supervise(supervisor)
        finally:
            audit.application(started=False)
            audit.close()
    finally:
        if admin is not None:
            admin.stop()
        for listener in listeners:
            listener.close()


def _supervise(supervisor: Supervisor) -> int:

    def _on_signal(signum: int, _frame: object) -> None:
        supervisor.log.info("signal_received", signal=signal.Signals(signum).name)
        supervisor.stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return supervisor.run()
