"""MedImageParse 2D requests carry ``models.medimageparse.batch_size`` frames each (docs/models.md
§3.1: several rows per request), against the emulator over real loopback HTTP, and the result
objects do not depend on how the frames were batched."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
from factory import ct_series

from converters.check import checked_bytes, encode
from listener.asgi import BackgroundServer
from listener.infer import build_clients
from listener.infer.tasks import TaskContext, TaskOutcome, run_task
from listener.route.plan import DEFAULT_ROLE, PlannedTask
from listener.settings import ModelSettings, ModelsSettings

SLICES = 6


def _parse(server: BackgroundServer, batch_size: int) -> TaskOutcome:
    sources = {str(ds.SOPInstanceUID): ds for ds in ct_series(SLICES, uid_seed="batching")}
    task = PlannedTask(
        rule="ct",
        name="parse",
        model="medimageparse",
        inputs={DEFAULT_ROLE: tuple(sources)},
        prompts=("lung", "tumor"),
    )
    models = ModelsSettings(medimageparse=ModelSettings(batch_size=batch_size))

    async def go() -> TaskOutcome:
        async with build_clients(models, server.url) as clients:
            context = TaskContext(
                clients=clients,
                load=sources.__getitem__,
                clock=lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            )
            return await run_task(task, context)

    return asyncio.run(go())


def _parse_requests(server: BackgroundServer) -> int:
    answer: dict[str, Any] = httpx.get(f"{server.url}/_emulator/stats").json()
    return int(answer["per_model"].get("medimageparse", 0))


def test_frames_go_out_batch_size_per_request_with_the_same_results(
    emulator: Callable[..., BackgroundServer],
) -> None:
    """Six slices with batch_size 4 take two requests (4 + 2 rows), with batch_size 1 six; the
    SEG and SR are byte-identical either way, and what the writer gets is what the gate checked."""
    server = emulator()
    batched = _parse(server, batch_size=4)
    assert _parse_requests(server) == 2
    single = _parse(server, batch_size=1)
    assert _parse_requests(server) == 2 + SLICES
    assert [str(o.Modality) for o in batched.objects] == ["SEG", "SR"]
    assert [checked_bytes(o) for o in batched.objects] == [checked_bytes(o) for o in single.objects]
    for obj in batched.objects:
        assert checked_bytes(obj) == encode(obj)
    seg = batched.objects[0]
    assert int(seg.NumberOfFrames) > 0 and np.count_nonzero(seg.pixel_array) > 0
