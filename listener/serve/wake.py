"""Wake-ups between the stages' processes: a doorbell per kind of work, a named pipe (FIFO).

The job runners take their work (jobs, and the outbox's sends) from the journal only and poll it
every ``poll_interval_s`` (0.5 s by default), which costs a study 0-0.5 s at each hand-over:
routing to the jobs, and each job to its results' sends. A stage that has just queued work rings
the doorbell of the stage that takes it (one byte written to
``<data_dir>/run/wake/<topic>.fifo``); a waiting stage wakes as soon as the pipe is readable and
polls the journal at once. The doorbell only
shortens a wait: the journal stays the one source of work, a lost or spurious ring changes
nothing but timing, and the poll stays the fallback (a stage that was busy when the bell rang
finds the work at its next poll at the latest).

Why a FIFO: it is local to the host like the journal's users, needs no port, no address length
limit and no registry of listeners; every waiting reader sees it readable (select(2)), and a
reader keeps it open for writing too, so it never reads end-of-file when the last writer goes.
A ring with no reader fails with ENXIO and a full pipe with EAGAIN: both mean nobody needs
another byte, so ringing never blocks and never fails. Where no FIFO can be made (a file
system without them), the stages log ``doorbell_unavailable`` once and only poll, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import stat
from pathlib import Path

from listener.logging import get_logger

JOBS = "jobs"  # routing queued jobs or forwards; a job ended (its results are due to send)
_DRAIN = 4096
log = get_logger("serve")


def bell_path(data_dir: Path, topic: str) -> Path:
    """The FIFO of ``topic`` under the data folder (created when missing)."""
    path = data_dir / "run" / "wake" / f"{topic}.fifo"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process made it first
            os.mkfifo(path, 0o600)
    if not stat.S_ISFIFO(path.stat().st_mode):
        raise RuntimeError(f"{path} exists and is not a FIFO")
    return path


def ring(data_dir: Path, topic: str) -> None:
    """Wake the stages waiting on ``topic``; nothing happens when none is waiting, nor when
    the pipe cannot be made (the waiters then poll, see :class:`Doorbell`)."""
    try:
        fd = os.open(bell_path(data_dir, topic), os.O_WRONLY | os.O_NONBLOCK)
    except (OSError, RuntimeError) as exc:
        if not (isinstance(exc, OSError) and exc.errno == errno.ENXIO):  # ENXIO: no reader
            log.debug("doorbell_not_rung", topic=topic, error=str(exc))
        return
    try:
        os.write(fd, b"\0")
    except BlockingIOError:
        pass  # the pipe is full of rings nobody has read yet: the readers are awake anyway
    finally:
        os.close(fd)


class Doorbell:
    """The waiting side of one topic's FIFO, for one process."""

    def __init__(self, data_dir: Path, topic: str) -> None:
        self._fd: int | None = None
        try:
            # O_RDWR keeps a writer open, so the pipe never shows end-of-file (module docstring)
            self._fd = os.open(bell_path(data_dir, topic), os.O_RDWR | os.O_NONBLOCK)
        except (OSError, RuntimeError) as exc:  # e.g. a file system without FIFOs
            log.warning("doorbell_unavailable", topic=topic, error=str(exc), fallback="poll")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _drain(self) -> bool:
        """Read every pending ring; whether there was one."""
        if self._fd is None:
            return False
        rung = False
        with contextlib.suppress(BlockingIOError):
            while os.read(self._fd, _DRAIN):
                rung = True
        return rung

    def wait(self, timeout_s: float) -> bool:
        """Block until the bell rings or ``timeout_s`` passes; whether it rang."""
        if self._drain():
            return True
        readable, _, _ = select.select(
            [self._fd] if self._fd is not None else [], [], [], timeout_s
        )
        return bool(readable) and self._drain()

    async def wait_async(self, timeout_s: float) -> bool:
        """:meth:`wait` on the running event loop. The pipe is watched only while waiting, so
        a process whose slots are all busy leaves the rings to the others."""
        if self._drain():
            return True
        fd = self._fd
        if fd is None:
            await asyncio.sleep(timeout_s)
            return False
        loop = asyncio.get_running_loop()
        rung: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not rung.done():
                rung.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await asyncio.wait_for(rung, timeout_s)
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)
        return self._drain()
