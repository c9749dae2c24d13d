"""A total deadline per model call, and Entra token refresh on 401, over real loopback HTTP
against the emulator (trickle fault mode; a set of accepted bearer tokens)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from listener.asgi import BackgroundServer
from listener.errors import PermanentModelError, TransientModelError
from listener.infer import ModelTransport
from listener.infer.auth import EntraAuth
from listener.infer.resilience import CallBackoff
from listener.settings import ModelSettings

Start = Callable[..., BackgroundServer]
BODY: dict[str, Any] = {
    "input_data": {"columns": ["image", "text"], "index": [0], "data": [["", "a chest x-ray"]]}
}


def stats(server: BackgroundServer) -> dict[str, Any]:
    """The emulator's request counters."""
    answer: dict[str, Any] = httpx.get(f"{server.url}/_emulator/stats").json()
    return answer


@dataclass
class AccessToken:
    """An access token as azure-identity returns it."""

    token: str
    expires_on: int


class CountingCredential:
    """A TokenCredential that hands out token-1, token-2, ... each valid for an hour."""

    def __init__(self) -> None:
        self.issued = 0

    def get_token(self, *scopes: str) -> AccessToken:
        self.issued += 1
        return AccessToken(f"token-{self.issued}", int(time.time()) + 3600)


def _transport(server: BackgroundServer, credential: CountingCredential) -> ModelTransport:
    return ModelTransport(
        "medimageinsight",
        ModelSettings(retries=3),
        endpoint=f"{server.url}/medimageinsight/score",
        authorizer=EntraAuth(credential),
        backoff=CallBackoff(initial_s=0.005, max_s=0.05),
    )


async def _score(transport: ModelTransport) -> Any:
    try:
        return await transport.score(BODY)
    finally:
        await transport.aclose()


def test_entra_401_refreshes_the_token_once_then_succeeds(emulator: Start) -> None:
    """The emulator rejects the first token: the transport drops it, takes a fresh one and the
    same call succeeds, with two requests and two tokens in all."""
    server = emulator(accepted_keys=["token-2"])
    credential = CountingCredential()
    answer = asyncio.run(_score(_transport(server, credential)))
    assert isinstance(answer, list) and answer[0]["text_features"]
    assert credential.issued == 2
    assert stats(server)["requests"] == 2


def test_entra_401_after_a_refresh_is_permanent(emulator: Start) -> None:
    """A token rejected again after one refresh fails the call as permanent: two requests, not
    a retry loop."""
    server = emulator(accepted_keys=["never-issued"])
    credential = CountingCredential()
    with pytest.raises(PermanentModelError, match="401 from medimageinsight endpoint: token"):
        asyncio.run(_score(_transport(server, credential)))
    assert credential.issued == 2
    assert stats(server)["requests"] == 2


def test_a_trickling_endpoint_is_cut_at_the_deadline_and_retried_as_transient(
    emulator: Start,
) -> None:
    """An endpoint sending a byte every 2 s (so no single read ever times out at 3 s) holds
    each request only until the 3 s deadline: both tries end as transient timeouts and the
    emulator sees the client hang up on both trickles, long before they would have ended."""
    server = emulator(fault_rate=1.0, trickle_interval_s=2.0)
    transport = ModelTransport(
        "medimageinsight",
        ModelSettings(timeout_s=3.0, retries=1, circuit_failures=10),
        endpoint=f"{server.url}/medimageinsight/score",
        backoff=CallBackoff(initial_s=0.005, max_s=0.05),
    )
    with pytest.raises(TransientModelError, match="no complete answer within the 3 s deadline"):
        asyncio.run(_score(transport))
    seen = stats(server)
    assert seen["requests"] == 2 and seen["trickled"] == 2
    for _ in range(100):  # the server notices the hang-ups on its next write
        if stats(server)["trickles_abandoned"] == 2:
            break
        time.sleep(0.1)
    assert stats(server)["trickles_abandoned"] == 2
