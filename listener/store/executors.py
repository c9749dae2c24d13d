"""The gateway's live processes, on every host that shares the journal: who is alive, and what to
do with the work of one that went silent.

Every process of ``pacs-ai serve`` (receivers, dispatcher, job runners) writes a heartbeat row
keyed by its lease owner name, ``executor_id:pid`` (the same name its job leases carry, see
:mod:`listener.store.jobs`), every third of ``executor_timeout_s``. A process killed with its
host (power cut, kill -9, a lost network) stops beating; the dispatcher's sweeper
(:func:`sweep_silent`) then releases the job leases it held, so another job runner takes them
at once instead of when their lease runs out, and the outbox entries its sender had claimed, and
forgets the row. A process that was only slow
and beats again writes its row anew; its jobs are fenced by the lease token, so a released job
it still works on cannot be completed twice (its results have deterministic UIDs either way).

The heartbeat uses each host's clock: hosts that share a journal keep their clocks in step
(NTP); the timeout (30 s by default) is far above what NTP leaves between them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from listener.logging import get_logger
from listener.store.db import JournalTables
from listener.store.jobs import JobStore
from listener.store.outbox import Outbox
from listener.store.permits import ModelPermits

_SCHEMA = """
CREATE TABLE IF NOT EXISTS executors (
    owner TEXT PRIMARY KEY,
    executor_id TEXT NOT NULL,
    process TEXT NOT NULL,
    role TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);
"""

_log = get_logger("executors")


def owner_name(executor_id: str, pid: int | None = None) -> str:
    """The name a process of ``executor_id`` goes by as a lease owner and in the heartbeats."""
    return f"{executor_id}:{os.getpid() if pid is None else pid}"


@dataclass(frozen=True)
class ExecutorBeat:
    """One process's latest heartbeat."""

    owner: str
    executor_id: str
    process: str
    role: str
    pid: int
    started_at: float
    heartbeat_at: float


class Executors(JournalTables):
    """The ``executors`` table: one heartbeat row per live process."""

    schema = _SCHEMA

    def beat(self, beat: ExecutorBeat) -> None:
        """Write (or refresh) a process's heartbeat."""
        with self.db.read() as db:
            db.execute(
                "INSERT INTO executors (owner, executor_id, process, role, pid, started_at,"
                " heartbeat_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (owner) DO UPDATE SET"
                " heartbeat_at = excluded.heartbeat_at, process = excluded.process,"
                " role = excluded.role",
                (
                    beat.owner,
                    beat.executor_id,
                    beat.process,
                    beat.role,
                    beat.pid,
                    beat.started_at,
                    beat.heartbeat_at,
                ),
            )

    def all(self) -> list[ExecutorBeat]:
        """Every process with a heartbeat row, by executor and process name."""
        with self.db.read() as db:
            rows = db.execute(
                "SELECT owner, executor_id, process, role, pid, started_at, heartbeat_at"
                " FROM executors ORDER BY executor_id, process"
            ).fetchall()
        return [ExecutorBeat(*row) for row in rows]

    def silent(self, now: float, timeout_s: float) -> list[ExecutorBeat]:
        """The processes whose last heartbeat is older than ``timeout_s`` at ``now``."""
        return [b for b in self.all() if b.heartbeat_at < now - timeout_s]

    def owners(self) -> set[str]:
        """The owner names of every process with a heartbeat row."""
        with self.db.read() as db:
            return {row[0] for row in db.execute("SELECT owner FROM executors").fetchall()}

    def forget_host(self, executor_id: str) -> int:
        """Remove the rows of every process of ``executor_id``: at its start-up, when none of
        them can still be running."""
        with self.db.read() as db:
            cursor = db.execute("DELETE FROM executors WHERE executor_id = ?", (executor_id,))
            return cursor.rowcount

    def forget(self, owner: str, heartbeat_at: float) -> bool:
        """Remove a silent process's row, unless it beat again since ``heartbeat_at``."""
        with self.db.read() as db:
            cursor = db.execute(
                "DELETE FROM executors WHERE owner = ? AND heartbeat_at = ?",
                (owner, heartbeat_at),
            )
            return cursor.rowcount > 0


def sweep_silent(
    executors: Executors,
    jobs: JobStore,
    now: float,
    timeout_s: float,
    outbox: Outbox | None = None,
    permits: ModelPermits | None = None,
) -> int:
    """Release the job leases (and outbox claims and request permits) of every process silent
    for ``timeout_s`` and
    forget it; return how many jobs were released. Run by the dispatcher of every host: two
    sweepers releasing one dead process's leases at once is harmless (the second finds none)."""
    released = 0
    for beat in executors.silent(now, timeout_s):
        if not executors.forget(beat.owner, beat.heartbeat_at):
            continue  # it beat again in between
        count = jobs.release_owner(beat.owner, now)
        sends = outbox.release_owner(beat.owner, now) if outbox is not None else 0
        if permits is not None:
            permits.release_owner(beat.owner)
        released += count
        _log.warning(
            "executor_silent",
            owner=beat.owner,
            process=beat.process,
            silent_s=round(now - beat.heartbeat_at, 1),
            jobs_released=count,
            sends_released=sends,
        )
    return released


def run_heartbeat(
    executors: Executors,
    beat: Callable[[float], ExecutorBeat],
    stop: threading.Event,
    interval_s: float,
    clock: Callable[[], float],
) -> None:
    """Beat every ``interval_s`` until ``stop``; a failed write is logged and tried again."""
    while True:
        try:
            executors.beat(beat(clock()))
        except Exception as exc:  # a busy or unreachable journal: the next beat tries again
            _log.warning("heartbeat_failed", error=str(exc))
        if stop.wait(interval_s):
            return
