"""MedImageParse 2D requests carry ``models.medimageparse.batch_size`` frames each (docs/models.md
§3.1: several rows per request), against the emulator over real loopback HTTP, and the result
objects do not depend on how the frames were batched."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
from parsing import parse_ct

from converters.check import checked_bytes, encode
from listener.asgi import BackgroundServer
from listener.infer.tasks import TaskOutcome
from listener.settings import ModelSettings, ModelsSettings

SLICES = 6


def _parse(server: BackgroundServer, batch_size: int) -> TaskOutcome:
    models = ModelsSettings(medimageparse=ModelSettings(batch_size=batch_size))
    return parse_ct(server.url, SLICES, "batching", models)


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
