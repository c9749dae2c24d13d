"""Who may call the admin app, and how: the token, the Host allow-list, same-origin changes, and
the security headers on every answer.

When the app binds to an address other than loopback, every path except ``/healthz`` needs the
``admin_token`` setting, as ``Authorization: Bearer <token>`` (API clients, Prometheus) or as the
password of HTTP Basic authentication (a browser opening the dashboard asks for it once and sends
it with every request, the overlay pictures included). Tokens are compared in constant time
(:func:`hmac.compare_digest`) and never logged.

Loopback without a token is open to the operator's own programs, but not to the web pages the
operator's browser opens (:class:`BrowserGuard`):

- DNS rebinding: a page on a domain that resolves to 127.0.0.1 reaches the app with its own name
  in ``Host``; only loopback names, the address the app binds to and ``admin_allowed_hosts`` are
  answered (400 otherwise), so such a page gets no data (RFC 9110 §7.2; the same defence as
  Django's ``ALLOWED_HOSTS``).
- Cross-site requests: a state-changing request (anything but GET, HEAD, OPTIONS) whose
  ``Sec-Fetch-Site`` (Fetch Metadata) is neither ``same-origin`` nor ``none``, or whose ``Origin``
  is not the app's own, is refused with 403. Programs that send neither header (curl, scripts)
  are not browsers and pass.
- Form posts: a state-changing request must say ``Content-Type: application/json`` (STOW-RS
  under ``/dicomweb/``: ``multipart/related``); a browser sends either cross-site only after a
  CORS preflight, which the app never grants (415 otherwise).

:class:`SecurityHeaders` adds to every answer a Content-Security-Policy with no inline script or
style (the dashboard loads ``/dashboard.js`` and ``/dashboard.css``), ``frame-ancestors 'none'``
with ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
no-referrer`` and ``Cross-Origin-Resource-Policy: same-origin``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from listener.errors import ConfigError
from listener.settings import Settings

OPEN_PATHS = frozenset({"/healthz"})
_CHALLENGE = b'Bearer realm="pacs-ai", Basic realm="pacs-ai"'
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAME_SITE_FETCHES = frozenset({"same-origin", "none"})  # Fetch Metadata: our page, or typed in
JSON_TYPE = "application/json"
STOW_TYPE = "multipart/related"  # PS3.18 10.5: the STOW-RS request body
DICOMWEB_PREFIX = "/dicomweb/"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


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


def _wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """The host names the app answers to (lower case, no port); None when ``admin_allowed_hosts``
    holds ``*`` (any)."""
    extra = {host.strip().lower().strip("[]") for host in settings.admin_allowed_hosts}
    if "*" in extra:
        return None
    bound = settings.admin_host.strip().lower().strip("[]")
    own = set() if _wildcard(bound) else {bound}
    return frozenset(LOOPBACK_NAMES | own | extra)


def host_name(value: str) -> str:
    """The host part of a ``Host`` header or an origin's authority, lower case, no port."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") > 1:
        return value  # a bare IPv6 address
    return value.partition(":")[0]


def _host_allowed(host: str, allowed: frozenset[str] | None) -> bool:
    if allowed is None:
        return True
    name = host_name(host)
    return name in allowed or is_loopback(name)


def _headers(scope: Scope) -> dict[bytes, str]:
    return {name: value.decode("latin-1") for name, value in scope.get("headers", [])}


async def _refuse(send: Send, status: int, message: str, *extra: tuple[bytes, bytes]) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BrowserGuard:
    """ASGI middleware against the web pages in the operator's browser (see the module
    docstring): the Host allow-list, then same-origin and JSON for state-changing requests."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str] | None) -> None:
        self.app = app
        self.allowed = allowed

    def _problem(self, scope: Scope) -> tuple[int, str] | None:
        headers = _headers(scope)
        host = headers.get(b"host", "")
        if scope.get("path") not in OPEN_PATHS and not _host_allowed(host, self.allowed):
            return 400, "Host not allowed: name it in the admin_allowed_hosts setting"
        if scope.get("method", "GET") in SAFE_METHODS:
            return None
        fetch_site = headers.get(b"sec-fetch-site")
        if fetch_site is not None and fetch_site.strip().lower() not in SAME_SITE_FETCHES:
            return 403, "cross-site request refused"
        origin = headers.get(b"origin")
        if origin is not None and origin.partition("://")[2].lower() != host.strip().lower():
            return 403, "cross-origin request refused"
        media_type = headers.get(b"content-type", "").partition(";")[0].strip().lower()
        if str(scope.get("path", "")).startswith(DICOMWEB_PREFIX):
            # STOW-RS bodies are multipart/related, a type no page can post without a preflight;
            # the route itself answers 415 for anything else (PS3.18 10.5)
            if media_type not in (JSON_TYPE, STOW_TYPE):
                return 415, f"send {STOW_TYPE} (STOW-RS) or {JSON_TYPE}"
            return None
        if media_type != JSON_TYPE:
            return 415, f"send a JSON body (Content-Type: {JSON_TYPE}); form posts are refused"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = self._problem(scope) if scope["type"] == "http" else None
        if problem is None:
            await self.app(scope, receive, send)
            return
        await _refuse(send, *problem)


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP answer (errors included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in SECURITY_HEADERS if n not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


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
        await _refuse(send, 401, "a bearer token is required", (b"www-authenticate", _CHALLENGE))
