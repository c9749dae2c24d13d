"""Resilience against a faulty or absent endpoint, over real loopback HTTP: retries through
injected faults, Retry-After, the concurrency limit, the circuit breaker, permanent errors."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from structlog.testing import capture_logs

from listener.asgi import BackgroundServer
from listener.emulator import create_app
from listener.errors import CircuitOpenError, PermanentModelError, TransientModelError
from listener.infer import MedImageInsightClient, ModelTransport, build_clients
from listener.infer.resilience import CallBackoff, CircuitState
from listener.settings import EmulatorSettings, ModelSettings, ModelsSettings

Start = Callable[..., BackgroundServer]


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stats(server: BackgroundServer) -> dict[str, Any]:
    """The emulator's request counters."""
    answer: dict[str, Any] = httpx.get(f"{server.url}/_emulator/stats").json()
    return answer


def mi_client(url: str, backoff: CallBackoff, **settings: Any) -> MedImageInsightClient:
    """A MedImageInsight client for the emulator at ``url``."""
    models = ModelsSettings(medimageinsight=ModelSettings(**settings))
    return build_clients(models, url, backoff=backoff).medimageinsight


def test_hundred_calls_succeed_through_thirty_percent_faults(
    emulator: Start, fast_backoff: CallBackoff
) -> None:
    """With 30% of requests answered 429/503 after 20 ms latency, 100 concurrent calls all
    succeed through retries."""
    server = emulator(latency_ms=20, fault_rate=0.3, fault_statuses=[429, 503], seed=7)
    client = mi_client(server.url, fast_backoff, concurrency=8, retries=12, circuit_failures=50)

    async def go() -> list[Any]:
        try:
            calls = [client.embed_texts([f"finding number {i}"]) for i in range(100)]
            return await asyncio.gather(*calls)
        finally:
            await client.aclose()

    answers = asyncio.run(go())
    assert len(answers) == 100 and all(answer[0].text is not None for answer in answers)
    seen = stats(server)
    assert seen["answered"] == 100
    assert seen["faults"] >= 15  # faults really happened (about 43 expected)
    assert seen["requests"] == 100 + seen["faults"]


def test_retry_after_is_honoured() -> None:
    """After a 429 with Retry-After: 1 the client waits about a second before it retries, even
    though its own backoff would retry within milliseconds."""
    arrivals: list[float] = []

    async def score(_request: Request) -> Response:
        arrivals.append(time.monotonic())
        if len(arrivals) == 1:
            return JSONResponse({"error": "busy"}, status_code=429, headers={"Retry-After": "1"})
        return JSONResponse([{"text_features": [1.0] + [0.0] * 1023}])

    app = Starlette(routes=[Route("/score", score, methods=["POST"])])
    with BackgroundServer(app) as server:
        settings = ModelSettings(endpoint=f"{server.url}/score", retries=2)
        transport = ModelTransport(
            "medimageinsight", settings, backoff=CallBackoff(initial_s=0.001, max_s=0.002)
        )
        client = MedImageInsightClient(transport, batch_size=1)

        async def go() -> None:
            await client.embed_texts(["text"])
            await client.aclose()

        asyncio.run(go())
    assert len(arrivals) == 2
    assert 1.0 <= arrivals[1] - arrivals[0] < 1.5


def test_requests_in_flight_never_exceed_the_limit(
    emulator: Start, fast_backoff: CallBackoff
) -> None:
    """Thirty concurrent calls through a client limited to 3 in flight reach the emulator at most
    three at a time (and do reach three)."""
    server = emulator(latency_ms=30)
    client = mi_client(server.url, fast_backoff, concurrency=3)

    async def go() -> None:
        await asyncio.gather(*(client.embed_texts([f"t{i}"]) for i in range(30)))
        await client.aclose()

    asyncio.run(go())
    assert stats(server)["max_in_flight_seen"] == 3


def test_emulator_sheds_load_beyond_its_limit_and_clients_recover(
    emulator: Start, fast_backoff: CallBackoff
) -> None:
    """An emulator that takes 2 requests at a time answers the rest 429, like the real service;
    a client sending 6 at a time still gets every answer through retries."""
    server = emulator(latency_ms=20, max_in_flight=2, retry_after_s=0.01)
    client = mi_client(server.url, fast_backoff, concurrency=6, retries=30)

    async def go() -> None:
        await asyncio.gather(*(client.embed_texts([f"t{i}"]) for i in range(24)))
        await client.aclose()

    asyncio.run(go())
    seen = stats(server)
    assert seen["answered"] == 24 and seen["rejected_busy"] > 0
    assert seen["max_in_flight_seen"] <= 2


def closed_port() -> int:
    """A port that refuses connections."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_circuit_opens_on_a_closed_port_then_fails_fast_and_recovers(
    emulator: Start, fast_backoff: CallBackoff
) -> None:
    """Against a closed port the breaker opens after 3 failed attempts (that call ends as a
    transient failure: requests were sent); later calls fail at once naming the endpoint and the
    last cause; after the reset time one probe goes through and, once the endpoint answers, the
    breaker closes."""
    port = closed_port()
    clock = FakeClock()
    models = ModelsSettings(
        medimageinsight=ModelSettings(retries=5, circuit_failures=3, circuit_reset_s=30)
    )
    clients = build_clients(models, f"http://127.0.0.1:{port}", backoff=fast_backoff, clock=clock)
    client = clients.medimageinsight
    endpoint = f"http://127.0.0.1:{port}/medimageinsight/score"

    async def failing_calls() -> float:
        with pytest.raises(TransientModelError, match="3 consecutive failures"):
            await client.embed_texts(["first"])
        started = time.monotonic()
        with pytest.raises(CircuitOpenError, match=re.escape(f"circuit open for {endpoint}")) as e:
            await client.embed_texts(["second"])
        fast = time.monotonic() - started
        cause = f"cannot reach medimageinsight endpoint {endpoint}: ConnectError"
        assert str(e.value).startswith(cause) and e.value.retry_after_s == 30.0
        clock.now += 31  # past circuit_reset_s: the next call is the half-open probe
        with pytest.raises(TransientModelError, match=r"next probe in 30\.0 s"):
            await client.embed_texts(["probe fails, the breaker opens again"])
        return fast

    fast = asyncio.run(failing_calls())
    assert fast < 0.05
    assert client.transport.breaker.state is CircuitState.OPEN
    emulator_up = BackgroundServer(create_app(EmulatorSettings()), port=port)
    with emulator_up:
        clock.now += 31

        async def recover() -> Any:
            answer = await client.embed_texts(["endpoint is back"])
            await clients.aclose()
            return answer

        assert asyncio.run(recover())[0].text is not None
    assert client.transport.breaker.state is CircuitState.CLOSED


def test_a_wrong_key_fails_at_once_and_says_so(
    emulator: Start, fast_backoff: CallBackoff, chest_png: bytes
) -> None:
    """A rejected key raises PermanentModelError naming the model and the cause, after exactly
    one request (no retries); the right key works."""
    server = emulator(key=SecretStr("right-key"))
    models = ModelsSettings(cxrreportgen=ModelSettings(key=SecretStr("wrong-key"), retries=5))
    clients = build_clients(models, server.url, backoff=fast_backoff)

    async def go() -> None:
        with pytest.raises(PermanentModelError) as raised:
            await clients.cxrreportgen.generate(chest_png)
        assert str(raised.value) == "401 from cxrreportgen endpoint: key rejected"
        assert "wrong-key" not in str(raised.value)
        await clients.aclose()

    asyncio.run(go())
    assert stats(server)["requests"] == 1
    good = build_clients(ModelsSettings(), server.url, emulator_key=SecretStr("right-key"))

    async def with_right_key() -> Any:
        try:
            return await good.cxrreportgen.generate(chest_png)
        finally:
            await good.aclose()

    assert asyncio.run(with_right_key()).findings


def test_a_model_error_fails_at_once_with_its_reason(
    emulator: Start, png: Callable[..., bytes]
) -> None:
    """A 424 (image not 1024×1024) raises PermanentModelError carrying the container's reason,
    after one request."""
    server = emulator()
    clients = build_clients(ModelsSettings(), server.url)

    async def go() -> None:
        with pytest.raises(
            PermanentModelError, match=r"424 from medimageparse endpoint: .*1024x1024"
        ):
            await clients.medimageparse.segment(png(np.zeros((512, 512))), ["liver"])
        await clients.aclose()

    asyncio.run(go())
    assert stats(server)["requests"] == 1


def test_a_slow_endpoint_times_out_and_is_retried(
    emulator: Start, fast_backoff: CallBackoff
) -> None:
    """A reply slower than timeout_s is a transient timeout, retried `retries` times: two
    attempts, each given up at the deadline, then the transient error."""
    server = emulator(latency_ms=3000)
    client = mi_client(server.url, fast_backoff, timeout_s=0.5, retries=1, circuit_failures=10)

    async def go() -> None:
        with pytest.raises(TransientModelError, match="timeout calling medimageinsight"):
            await client.embed_texts(["slow"])
        await client.aclose()

    with capture_logs() as events:
        asyncio.run(go())
    # Counted by the client: on a loaded machine the server may not have accepted the second
    # connection before the client gave up on it.
    assert [e["attempt"] for e in events if e["event"] == "model_call_retry"] == [1]
    (failed,) = [e for e in events if e["event"] == "model_call_failed"]
    assert failed["attempts"] == 2
    assert stats(server)["requests"] >= 1
