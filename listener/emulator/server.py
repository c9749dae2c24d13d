"""Starting the emulator: in a background thread on a loopback port (``pacs-ai serve``, ``pacs-ai
process``, tests) or in the foreground (``pacs-ai emulator``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from listener.asgi import BackgroundServer, bind, server_config
from listener.emulator.app import create_app
from listener.infer.wire import EMULATOR_NOTICE
from listener.logging import get_logger
from listener.settings import MODEL_NAMES, EmulatorSettings, Settings


def _announce(settings: EmulatorSettings, url: str) -> None:
    get_logger("emulator").warning(
        "emulator_started",
        url=url,
        notice=f"model emulator, {EMULATOR_NOTICE}: answers are synthetic",
        latency_ms=settings.latency_ms,
        fault_rate=settings.fault_rate,
        max_in_flight=settings.max_in_flight,
    )


def start_emulator(settings: EmulatorSettings) -> BackgroundServer:
    """Start the emulator in a background thread and return the running server (``.url``)."""
    server = BackgroundServer(create_app(settings), settings.host, settings.port)
    server.start()
    _announce(settings, server.url)
    return server


def run_emulator(settings: EmulatorSettings) -> None:
    """Serve the emulator in the foreground until interrupted (Ctrl-C / SIGTERM)."""
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    _announce(settings, f"http://{host}:{port}")
    uvicorn.Server(server_config(create_app(settings))).run(sockets=[sock])


@contextmanager
def emulator_if_needed(settings: Settings) -> Iterator[str | None]:
    """Start the built-in emulator when some model has no endpoint; yield its URL (or None)."""
    if all(settings.models.get(name).endpoint for name in MODEL_NAMES):
        yield None
        return
    server = start_emulator(settings.emulator)
    try:
        yield server.url
    finally:
        server.stop()
