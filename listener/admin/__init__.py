"""The admin HTTP API, Prometheus metrics and the operator dashboard.

``pacs-ai serve`` starts it with :func:`start_admin` (a uvicorn server on a background thread,
``admin_host``:``admin_port``); tests build the app with :func:`create_admin_app`.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from pathlib import Path

from listener.admin.app import create_admin_app
from listener.admin.security import required_token
from listener.admin.state import AdminState, open_state
from listener.asgi import BackgroundServer
from listener.errors import ConfigError
from listener.logging import get_logger
from listener.route.model import rules_fingerprint
from listener.settings import Settings
from listener.store.records import AdminRecords, ModelCallRecorder


class AdminServer(BackgroundServer):
    """The admin app on its background thread; :meth:`stop` also closes its journal handle."""

    def __init__(
        self,
        state: AdminState,
        host: str,
        port: int,
        token: str | None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        super().__init__(create_admin_app(state, token=token), host, port, tls)
        self.state = state

    def stop(self) -> None:
        super().stop()
        self.state.close()


def start_admin(settings: Settings, clock: Callable[[], float] = time.time) -> AdminServer:
    """Start the admin server for ``settings`` and return it (``.url``, ``.stop()``).

    Raises ConfigError naming ``admin_token`` when ``admin_host`` is not loopback and no token
    is set, and naming ``admin_port`` when the port is taken (one line, not a traceback). With
    ``admin_tls.cert_file`` it serves HTTPS only.
    """
    token = required_token(settings)
    cert, key = settings.admin_tls.cert_file, settings.admin_tls.key_file
    server = AdminServer(
        open_state(settings, clock),
        settings.admin_host,
        settings.admin_port,
        token,
        (cert, key) if cert is not None and key is not None else None,
    )
    try:
        server.start()
    except OSError as exc:
        server.state.close()
        taken = exc.errno == errno.EADDRINUSE
        why = "is already in use (another program listens there)" if taken else exc.strerror
        raise ConfigError(
            f"admin_port: {settings.admin_port} on {settings.admin_host} {why}"
        ) from None
    get_logger("admin").info("admin_listening", url=server.url, token_required=token is not None)
    return server


__all__ = [
    "AdminRecords",
    "AdminServer",
    "AdminState",
    "ModelCallRecorder",
    "create_admin_app",
    "open_state",
    "rules_fingerprint",
    "start_admin",
]
