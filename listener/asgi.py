"""Running an ASGI app with uvicorn: in a background thread (the admin API, the emulator in
``pacs-ai serve`` and in tests) or blocking (the emulator's own command).

The listening socket is bound here before uvicorn starts, so port 0 yields a free port whose real
number is known at once (no race between picking a port and binding it).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import uvicorn
from starlette.types import ASGIApp

from listener.security.tls import BCP195_CIPHERS

_START_TIMEOUT_S = 10.0


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port), inheritable by uvicorn."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def server_config(app: ASGIApp, tls: tuple[Path, Path] | None = None) -> uvicorn.Config:
    """Uvicorn's settings for our apps: quiet logs, no lifespan, a short graceful stop; with
    ``tls`` (certificate, key) HTTPS only, with the BCP 195 cipher suites."""
    options: dict[str, object] = {}
    if tls is not None:
        options = {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])}
        options["ssl_ciphers"] = BCP195_CIPHERS
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
        **options,  # type: ignore[arg-type]
    )


class BackgroundServer:
    """Serves an ASGI app from a daemon thread; use as a context manager or start()/stop()."""

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._tls = tls
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> str:
        """Start serving and return the base URL, e.g. ``http://127.0.0.1:40123``."""
        sock = bind(self._host, self._port)
        host, port = sock.getsockname()[:2]
        scheme = "https" if self._tls else "http"
        self.url = f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
        server = uvicorn.Server(server_config(self._app, self._tls))
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="asgi-server", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError(f"the server at {self.url} did not start")
            time.sleep(0.01)
        self._server, self._thread = server, thread
        return self.url

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=_START_TIMEOUT_S)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
