"""The supervisor over real child processes: a crash-looping child turns /readyz red."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
from peers import free_port

from listener.admin import create_admin_app, open_state
from listener.asgi import BackgroundServer
from listener.serve.supervisor import Supervisor, _Child
from listener.settings import load_settings


def crash(message: str) -> None:
    """A child entry point that fails at once, as one with a broken dependency would."""
    raise RuntimeError(message)


def test_crash_looping_child_makes_readiness_fail_with_its_name_and_error(
    tmp_path: Path,
) -> None:
    """A child that keeps exiting is restarted with backoff, and /readyz answers 503 naming the
    process and its last error; before it loops, the gateway is ready."""
    settings = load_settings(
        None, host="127.0.0.1", port=free_port(), data_dir=tmp_path / "data", disk_min_free_mb=0
    )
    supervisor = Supervisor(settings)
    supervisor.children = [_Child("job-runner-0", crash, ("model client cannot start",))]
    state = open_state(settings)
    try:
        with BackgroundServer(create_admin_app(state)) as server:
            assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200
            runner = threading.Thread(target=supervisor.run, daemon=True)
            runner.start()
            deadline = time.monotonic() + 30
            answer = httpx.get(f"{server.url}/readyz", timeout=30)
            while answer.status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.2)
                answer = httpx.get(f"{server.url}/readyz", timeout=30)
            supervisor.stop.set()
            runner.join(30)
    finally:
        state.close()
    assert answer.status_code == 503
    (reason,) = answer.json()["reasons"]
    assert "job-runner-0 is crash-looping" in reason
    assert "RuntimeError: model client cannot start" in reason
