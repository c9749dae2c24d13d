"""Doorbells between the stages: a ring wakes a waiting stage at once; the poll stays the
fallback, so a ring nobody hears changes nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

from listener.serve.wake import JOBS, Doorbell, bell_path, ring

OTHER = "other"  # a topic nobody in the gateway uses

HOUR = 3600.0  # a wait that would outlast the test: only a ring ends it


def test_a_ring_with_nobody_waiting_is_a_no_op(tmp_path: Path) -> None:
    """Ringing a topic no process waits on neither blocks nor fails, however often."""
    for _ in range(3):
        ring(tmp_path, JOBS)
    assert bell_path(tmp_path, JOBS).is_fifo()


def test_rings_nobody_reads_never_block_the_ringer(tmp_path: Path) -> None:
    """A waiter that stays busy lets the pipe fill; further rings return at once, and the
    waiter then wakes once and finds the pipe empty again."""
    bell = Doorbell(tmp_path, OTHER)
    try:
        for _ in range(70_000):  # more bytes than a pipe holds (64 KiB on Linux)
            ring(tmp_path, OTHER)
        assert bell.wait(HOUR)
        assert not bell.wait(0.01)
    finally:
        bell.close()


def test_a_ring_from_another_process_ends_a_wait(tmp_path: Path) -> None:
    """A stage blocked for an hour wakes when another process rings its topic, and only its
    own topic: a ring of another topic leaves the wait running until it times out."""
    bell = Doorbell(tmp_path, JOBS)
    try:
        ring(tmp_path, OTHER)
        assert not bell.wait(0.01)
        code = "import sys; from pathlib import Path; from listener.serve.wake import ring; "
        code += "ring(Path(sys.argv[1]), 'jobs')"
        subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
        assert bell.wait(HOUR)
    finally:
        bell.close()


def test_an_event_loop_wait_ends_on_a_ring_from_a_thread(tmp_path: Path) -> None:
    """The job runner's wait (on its event loop) ends when the bell rings during the wait."""
    bell = Doorbell(tmp_path, JOBS)

    async def wait_while_ringing() -> bool:
        ringer = threading.Timer(0.2, ring, args=(tmp_path, JOBS))
        ringer.start()
        try:
            return await bell.wait_async(HOUR)
        finally:
            ringer.join()

    try:
        assert asyncio.run(wait_while_ringing())
    finally:
        bell.close()


def test_without_a_pipe_the_stages_fall_back_to_polling(tmp_path: Path) -> None:
    """Where the doorbell cannot be a FIFO (here a plain file holds its name), ringing does
    nothing and waiting is the poll's sleep: the stages keep working, only without wake-ups."""
    path = tmp_path / "run" / "wake" / "jobs.fifo"
    path.parent.mkdir(parents=True)
    path.write_text("not a pipe")
    ring(tmp_path, JOBS)
    bell = Doorbell(tmp_path, JOBS)
    try:
        assert not bell.wait(0.01)
        assert not asyncio.run(bell.wait_async(0.01))
    finally:
        bell.close()
    assert path.read_text() == "not a pipe"
