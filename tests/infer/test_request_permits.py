"""A model's ``concurrency`` across processes (the journal's request permits), a job's requests in
parallel within it, and the label texts' embeddings kept between classifications: against the
emulator over real loopback HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from parsing import parse_ct

from converters.check import checked_bytes
from listener.asgi import BackgroundServer
from listener.errors import TransientModelError
from listener.infer import (
    CxrReportGenClient,
    MedImageInsightClient,
    ModelClients,
    ModelTransport,
    build_clients,
)
from listener.infer.clients import TEXT_CACHE_S
from listener.infer.permits import RequestPermits
from listener.infer.resilience import CircuitState
from listener.infer.tasks import TaskOutcome
from listener.settings import ModelSettings, ModelsSettings
from listener.store.permits import ModelPermits

LATENCY_MS = 150


def _stats(server: BackgroundServer) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{server.url}/_emulator/stats").json()
    return answer


def _clients(server: BackgroundServer, models: ModelsSettings, permits: Any = None) -> ModelClients:
    return build_clients(models, server.url, permits=permits)


def _two_processes_send(server: BackgroundServer, journal: Path | None, png: bytes) -> None:
    """Two job runners' clients (each its own connection and holder name when ``journal`` is
    given), six CXRReportGen requests at once from each."""
    models = ModelsSettings(cxrreportgen=ModelSettings(concurrency=2))

    async def go() -> None:
        stores = [ModelPermits(journal) for _ in range(2)] if journal else []
        permits = [RequestPermits(s, f"work-{n}:{n}") for n, s in enumerate(stores)]
        async with (
            _clients(server, models, permits[0] if permits else None) as one,
            _clients(server, models, permits[1] if permits else None) as two,
        ):
            calls = [c.cxrreportgen.generate(png) for c in (one, two) for _ in range(6)]
            await asyncio.gather(*calls)
        for store in stores:
            store.close()

    asyncio.run(go())


def test_two_processes_keep_the_model_limit_between_them(
    tmp_path: Path, emulator: Callable[..., BackgroundServer], chest_png: bytes
) -> None:
    """Each process alone may have ``concurrency`` (2) requests in flight; with the permits the
    endpoint sees at most 2 from both together, and 2 is reached. Without them it sees 4."""
    shared = emulator(latency_ms=LATENCY_MS)
    _two_processes_send(shared, tmp_path / "journal.sqlite", chest_png)
    stats = _stats(shared)
    assert stats["per_model"]["cxrreportgen"] == 12
    assert stats["max_in_flight_per_model"]["cxrreportgen"] == 2
    assert ModelPermits(tmp_path / "journal.sqlite").held("cxrreportgen", 0.0) == 0

    unshared = emulator(latency_ms=LATENCY_MS)
    _two_processes_send(unshared, None, chest_png)
    assert _stats(unshared)["max_in_flight_per_model"]["cxrreportgen"] == 4


def _parse(server: BackgroundServer, journal: Path, concurrency: int) -> TaskOutcome:
    models = ModelsSettings(medimageparse=ModelSettings(batch_size=1, concurrency=concurrency))
    store = ModelPermits(journal)
    try:
        return parse_ct(server.url, 8, "permits", models, permits=RequestPermits(store, "w:1"))
    finally:
        store.close()


def test_one_segmentation_sends_as_many_requests_as_the_model_takes(
    tmp_path: Path, emulator: Callable[..., BackgroundServer]
) -> None:
    """A CT's frames go out in parallel requests up to the model's ``concurrency`` (3), not one
    after another; the result objects are those of requests sent one at a time."""
    server = emulator(latency_ms=LATENCY_MS)
    parallel = _parse(server, tmp_path / "journal.sqlite", concurrency=3)
    stats = _stats(server)
    assert stats["per_model"]["medimageparse"] == 8
    assert stats["max_in_flight_per_model"]["medimageparse"] == 3

    one_at_a_time = emulator(latency_ms=LATENCY_MS)
    serial = _parse(one_at_a_time, tmp_path / "journal.sqlite", concurrency=1)
    assert _stats(one_at_a_time)["max_in_flight_per_model"]["medimageparse"] == 1
    assert [checked_bytes(o) for o in parallel.objects] == [
        checked_bytes(o) for o in serial.objects
    ]


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_label_texts_are_embedded_once_and_again_after_their_time(
    emulator: Callable[..., BackgroundServer], chest_png: bytes
) -> None:
    """The second classification with the same labels sends only its image; a new label is
    sent alone; after TEXT_CACHE_S the texts are asked for again. Same vectors either way."""
    server = emulator()
    clock = Clock()

    async def go() -> list[list[Any]]:
        endpoint = f"{server.url}/medimageinsight/score"
        transport = ModelTransport("medimageinsight", ModelSettings(), endpoint=endpoint)
        client = MedImageInsightClient(transport, batch_size=16, clock=clock)
        try:
            first = await client.embed_texts(["pneumonia", "normal"])
            assert _stats(server)["per_model"]["medimageinsight"] == 1
            again = await client.embed_texts(["normal", "pneumonia", "effusion"])
            assert _stats(server)["per_model"]["medimageinsight"] == 2
            clock.now += TEXT_CACHE_S + 1
            later = await client.embed_texts(["pneumonia"])
            assert _stats(server)["per_model"]["medimageinsight"] == 3
        finally:
            await client.aclose()
        return [
            [e.text.tolist() for e in answer if e.text is not None]
            for answer in (first, again, later)
        ]

    first, again, later = asyncio.run(go())
    assert again[1] == first[0] and again[0] == first[1] and later[0] == first[0]


def test_cancelled_requests_give_their_permits_back(tmp_path: Path) -> None:
    """Requests cancelled at every stage (taking a permit, on the wire, giving it back), as a
    job's other requests are when one of them fails: no permit stays held, so the next
    requests are not kept waiting until the lost ones lapse."""

    async def go() -> int:
        store = ModelPermits(tmp_path / "journal.sqlite")
        permits = RequestPermits(store, "work-1:1")

        async def request() -> None:
            async with permits.hold("medimageinsight", 2, deadline_s=60.0):
                await asyncio.sleep(0.005)

        for round_ in range(40):
            tasks = [asyncio.ensure_future(request()) for _ in range(4)]
            await asyncio.sleep(0.001 * (round_ % 8))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.3)  # the releases that went on in the background
        held = store.held("medimageinsight", time.time())
        store.close()
        return held

    assert asyncio.run(go()) == 0


def test_calls_beside_the_half_open_probe_wait_for_its_outcome(
    emulator: Callable[..., BackgroundServer], chest_png: bytes
) -> None:
    """After an outage opened the breaker, a job's two requests at once: one is the probe, the
    other waits for the probe's answer instead of failing with the circuit open (which would
    fail the job and cancel its probe, again at every retry), and both are answered."""
    server = emulator(latency_ms=300, fault_rate=1.0, fault_statuses=[503], fault_for_s=0.5)
    settings = ModelSettings(retries=0, circuit_failures=1, circuit_reset_s=0.5)
    endpoint = f"{server.url}/cxrreportgen/score"

    async def go() -> list[Any]:
        client = CxrReportGenClient(ModelTransport("cxrreportgen", settings, endpoint=endpoint))
        try:
            with contextlib.suppress(TransientModelError):
                await client.generate(chest_png)  # the outage: the breaker opens
            assert client.transport.breaker.state is CircuitState.OPEN
            await asyncio.sleep(1.0)  # the outage is over and the breaker may probe
            return await asyncio.gather(
                client.generate(chest_png), client.generate(chest_png), return_exceptions=True
            )
        finally:
            await client.aclose()

    answers = asyncio.run(go())
    assert [type(a).__name__ for a in answers] == ["CxrReport", "CxrReport"]
