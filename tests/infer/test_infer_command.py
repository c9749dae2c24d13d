"""The emulator as a command: ``python -m listener.emulator`` serves over HTTP and says what it
is."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from listener.infer.wire import EMULATOR_HEADER, EMULATOR_NOTICE


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.integration
def test_module_runs_the_emulator_on_the_given_port() -> None:
    """The command serves the emulator on the port given and logs that it is not a clinical
    model; SIGTERM stops it."""
    port = free_port()
    env = {**os.environ, "PACSAI_LOG_FORMAT": "json"}
    process = subprocess.Popen(
        [sys.executable, "-m", "listener.emulator", "--port", str(port), "--latency-ms", "1"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = httpx.post(
                    f"http://127.0.0.1:{port}/medimageinsight/score",
                    json={"input_data": {"columns": ["text"], "index": [0], "data": [["chest"]]}},
                )
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        assert answer.status_code == 200
        assert answer.headers[EMULATOR_HEADER] == EMULATOR_NOTICE
        assert len(answer.json()[0]["text_features"]) == 1024
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert "emulator_started" in stderr and "not a clinical model" in stderr


def test_a_bad_option_names_the_setting() -> None:
    """An out-of-range port ends the command with status 2 and a message naming the setting."""
    done = subprocess.run(
        [sys.executable, "-m", "listener.emulator", "--port", "70000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "emulator.port" in done.stderr
