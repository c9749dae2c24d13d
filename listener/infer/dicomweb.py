"""An HTTP client of a DICOMweb service (PS3.18): authentication, QIDO-RS and WADO-RS.

Shared by the STOW-RS sender (:mod:`listener.send.stow`) and the prior look-up
(:mod:`listener.infer.pacs`). Built on httpx rather than ``dicomweb-client``: that library
encodes every instance it stores from a pydicom data set in memory (neither streamed nor
byte-preserving) and speaks ``requests``; here the stored files go out as they are, streamed
from disk, and one client type serves the whole gateway.

Authentication (:class:`~listener.settings.WebAuth`): none, HTTP Basic, a fixed bearer token,
or a Microsoft Entra token for a configurable scope (azure-identity's default credential, the
optional ``entra`` extra), cached until shortly before it expires and fetched again once when
the service answers 401.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import httpx
from python_multipart.multipart import MultipartParser, parse_options_header

from listener.errors import ConfigError
from listener.infer.auth import TokenCredential, _default_credential
from listener.settings import Destination, WebAuth

DICOM_JSON = "application/dicom+json"
_REFRESH_MARGIN_S = 300.0


class _Bearer(httpx.Auth):
    """``Authorization: Bearer`` with a fixed token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


class EntraWebAuth(httpx.Auth):
    """A Microsoft Entra token for ``scope``, cached; a 401 gets one retry with a fresh one."""

    def __init__(
        self,
        scope: str,
        credential: TokenCredential | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._scope = scope
        self._credential = credential or _default_credential("auth")
        self._clock = clock
        self._token: str | None = None
        self._expires_on = 0.0
        self._lock = threading.Lock()

    def _header(self, fresh: bool = False) -> str:
        with self._lock:
            stale = self._clock() >= self._expires_on - _REFRESH_MARGIN_S
            if fresh or self._token is None or stale:
                access = self._credential.get_token(self._scope)
                self._token, self._expires_on = str(access.token), float(access.expires_on)
            return f"Bearer {self._token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header()
        response = yield request
        if response.status_code == httpx.codes.UNAUTHORIZED:
            request.headers["Authorization"] = self._header(fresh=True)
            yield request


def web_auth(auth: WebAuth) -> httpx.Auth | None:
    """The httpx authentication of a DICOMweb destination's ``auth`` setting."""
    if auth.type == "basic":
        assert auth.username is not None and auth.password is not None
        return httpx.BasicAuth(auth.username, auth.password.get_secret_value())
    if auth.type == "bearer":
        assert auth.token is not None
        return _Bearer(auth.token.get_secret_value())
    if auth.type == "entra":
        return EntraWebAuth(auth.scope)
    return None


def open_client(dest: Destination, *, timeout_s: float | None = None) -> httpx.Client:
    """An httpx client for the DICOMweb service ``dest`` (its URL is the base of every path)."""
    if dest.kind != "dicomweb" or not dest.url:
        raise ConfigError(f"destination {dest.describe()}: not a dicomweb destination")
    return httpx.Client(
        base_url=dest.url.rstrip("/"),
        auth=web_auth(dest.auth),
        timeout=httpx.Timeout(timeout_s or dest.timeout_s),
        headers={"User-Agent": "pacs-ai"},
    )


def qido(client: httpx.Client, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
    """A QIDO-RS search (PS3.18 §10.6): the matches as DICOM JSON objects (204 is none)."""
    response = client.get(path, params=params, headers={"Accept": DICOM_JSON})
    if response.status_code == httpx.codes.NO_CONTENT:
        return []
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()
    return found


def json_value(item: dict[str, Any], tag: str) -> Any:
    """The first value of ``tag`` (8 hex digits) in a DICOM JSON object, or None."""
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def wado_instance(client: httpx.Client, study: str, series: str, instance: str) -> bytes:
    """WADO-RS Retrieve Instance (PS3.18 §10.4): the PS3.10 file as the origin stored it."""
    path = f"/studies/{study}/series/{series}/instances/{instance}"
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    with client.stream("GET", path, headers={"Accept": accept}) as response:
        response.raise_for_status()
        parts = list(multipart_parts(response.headers["content-type"], response.iter_bytes()))
    if not parts:
        raise ValueError("WADO-RS answered no part")
    return parts[0]


def multipart_parts(content_type: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The bodies of a ``multipart/related`` response (small ones: each is kept in memory)."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise ValueError("a multipart response without a boundary")
    parts: list[bytes] = []
    current = bytearray()

    def on_data(data: bytes, start: int, end: int) -> None:
        current.extend(data[start:end])

    def on_end() -> None:
        parts.append(bytes(current))
        current.clear()

    parser = MultipartParser(boundary, {"on_part_data": on_data, "on_part_end": on_end})
    for chunk in chunks:
        parser.write(chunk)
        yield from parts
        parts.clear()
    parser.finalize()
    yield from parts
