"""Who may call the admin app: anyone on loopback, only token holders otherwise.

When the app binds to an address other than loopback, every path except ``/healthz`` needs the
``admin_token`` setting, as ``Authorization: Bearer <token>`` (API clients, Prometheus) or as the
password of HTTP Basic authentication (a browser opening the dashboard asks for it once and sends
it with every request, the overlay pictures included). Tokens are compared in constant time and
never logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from listener.errors import ConfigError
from listener.settings import Settings

OPEN_PATHS = frozenset({"/healthz"})
_CHALLENGE = b'Bearer realm="pacs-ai", Basic realm="pacs-ai"'


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def required_token(settings: Settings) -> str | None:
    """The token callers must present, or None on loopback; ConfigError when one is missing."""
    token = settings.admin_token.get_secret_value() if settings.admin_token else ""
    if is_loopback(settings.admin_host):
        return token or None
    if not token:
        raise ConfigError(
            f"admin_token: required when admin_host ({settings.admin_host}) is not a loopback"
            " address"
        )
    return token


def presented_token(authorization: str) -> str | None:
    """The token in an Authorization header value (Bearer, or Basic with it as the password)."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


class TokenGuard:
    """ASGI middleware answering 401 to HTTP requests without the right token."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    def _allowed(self, scope: Scope) -> bool:
        if scope.get("path") in OPEN_PATHS:
            return True
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                token = presented_token(value.decode("latin-1"))
                return token is not None and hmac.compare_digest(token.encode(), self._token)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "a bearer token is required"}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", _CHALLENGE),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})
