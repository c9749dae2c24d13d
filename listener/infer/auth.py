"""The ``Authorization: Bearer`` value for a model endpoint (docs/models.md §0, auth header).

Key auth sends the endpoint key; Entra auth sends a Microsoft Entra token for the scope
``https://ml.azure.com/.default`` from azure-identity's ``DefaultAzureCredential``, imported only
when asked for (it is the optional ``entra`` extra) and refreshed before it expires, or at once
when the endpoint rejects it (:meth:`Authorizer.invalidate`: a token revoked or rotated before its
``expires_on`` is answered 401, and one fresh token decides whether the rejection is permanent).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import SecretStr

from listener.errors import ConfigError

ENTRA_SCOPE = "https://ml.azure.com/.default"
_REFRESH_MARGIN_S = 300.0


class Authorizer(Protocol):
    """Produces the Authorization header value, or None to send none."""

    kind: str

    async def header(self) -> str | None: ...

    def invalidate(self) -> bool:
        """Forget the credential the endpoint just rejected; True when the next
        :meth:`header` brings a fresh one (worth one more try), False when it cannot."""
        ...


class TokenCredential(Protocol):
    """The part of azure-core's ``TokenCredential`` used here."""

    def get_token(self, *scopes: str) -> Any: ...


class KeyAuth:
    """Bearer endpoint key; no header when no key is configured (e.g. an open emulator)."""

    kind = "key"

    def __init__(self, key: SecretStr | None) -> None:
        self._key = key

    async def header(self) -> str | None:
        return f"Bearer {self._key.get_secret_value()}" if self._key is not None else None

    def invalidate(self) -> bool:
        return False  # a key does not change by asking again

    def __repr__(self) -> str:
        return "KeyAuth(key=***)"


class EntraAuth:
    """Bearer Entra token, cached until ``_REFRESH_MARGIN_S`` before its ``expires_on``.

    ``credential`` defaults to ``DefaultAzureCredential()``; its blocking ``get_token`` runs in a
    worker thread. ``clock`` gives the epoch seconds that ``expires_on`` is compared with.
    """

    kind = "entra"

    def __init__(
        self,
        credential: TokenCredential | None = None,
        *,
        setting: str = "auth",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credential = credential if credential is not None else _default_credential(setting)
        self._clock = clock
        self._token: str | None = None
        self._expires_on = 0.0
        self._lock = asyncio.Lock()

    async def header(self) -> str | None:
        async with self._lock:
            if self._token is None or self._clock() >= self._expires_on - _REFRESH_MARGIN_S:
                access = await asyncio.to_thread(self._credential.get_token, ENTRA_SCOPE)
                self._token = str(access.token)
                self._expires_on = float(access.expires_on)
            return f"Bearer {self._token}"

    def invalidate(self) -> bool:
        self._token = None
        return True

    def __repr__(self) -> str:
        return "EntraAuth(token=***)"


def _default_credential(setting: str) -> TokenCredential:
    try:
        from azure.identity import DefaultAzureCredential  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise ConfigError(
            f"{setting}: 'entra' needs azure-identity; install the 'entra' extra"
        ) from exc
    credential: TokenCredential = DefaultAzureCredential()
    return credential
