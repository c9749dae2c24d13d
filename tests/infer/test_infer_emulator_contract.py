"""Every client against the emulator over real loopback HTTP: the answers parse into the typed
results and follow the image content as the emulator promises."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
from collections.abc import Callable
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from converters.model_outputs import PARSE_CATEGORIES
from listener.asgi import BackgroundServer
from listener.emulator.answers import EMULATOR_SENTENCE
from listener.errors import ConfigError
from listener.infer import ModelTransport, build_clients
from listener.settings import ModelSettings, ModelsSettings

Start = Callable[..., BackgroundServer]


def stats(server: BackgroundServer) -> dict[str, Any]:
    """The emulator's request counters."""
    answer: dict[str, Any] = httpx.get(f"{server.url}/_emulator/stats").json()
    return answer


def test_embeddings_are_unit_vectors_that_follow_the_image(
    emulator: Start, png: Callable[..., bytes]
) -> None:
    """Image vectors are unit-norm 1024 floats; a brightened copy lands next to the original and
    a different picture does not; the scaling factor is about 4.51."""
    server = emulator()
    base = np.full((64, 80), 30, dtype=np.uint8)
    base[10:40, 5:30] = 220
    other = np.full((64, 80), 30, dtype=np.uint8)
    other[30:60, 50:75] = 220

    async def go() -> list[Any]:
        async with build_clients(ModelsSettings(), server.url) as clients:
            return await clients.medimageinsight.embed_images(
                [png(base), png(base + 20), png(other)]
            )

    same, brighter, different = asyncio.run(go())
    assert same.image is not None and brighter.image is not None and different.image is not None
    assert same.image.shape == (1024,)
    assert np.linalg.norm(same.image) == pytest.approx(1.0, abs=1e-5)
    assert float(same.image @ brighter.image) > 0.99
    assert float(same.image @ different.image) < 0.5
    assert same.scaling_factor == pytest.approx(4.51, abs=0.01)
    assert same.text is None


def test_embeddings_are_batched_and_keep_their_order(
    emulator: Start, png: Callable[..., bytes]
) -> None:
    """Twenty images with batch_size 8 go out as three requests and come back in input order."""
    server = emulator()
    images = [png(np.arange(64, dtype=np.uint8).reshape(8, 8) * (i % 4 + 1)) for i in range(20)]
    models = ModelsSettings(medimageinsight=ModelSettings(batch_size=8))

    async def go() -> tuple[list[Any], list[Any]]:
        async with build_clients(models, server.url) as clients:
            batch = await clients.medimageinsight.embed_images(images)
            alone = await clients.medimageinsight.embed_images([images[13]])
            return batch, alone

    batch, alone = asyncio.run(go())
    assert len(batch) == 20
    assert stats(server)["per_model"]["medimageinsight"] == 4
    np.testing.assert_allclose(batch[13].image, alone[0].image)


def test_text_embeddings_are_stable_per_text(emulator: Start) -> None:
    """The same text maps to the same unit vector on every call; other texts map elsewhere."""
    server = emulator()
    texts = ["x-ray chest anteroposterior Atelectasis.", "x-ray chest anteroposterior Effusion."]

    async def go() -> tuple[list[Any], list[Any]]:
        async with build_clients(ModelsSettings(), server.url) as clients:
            first = await clients.medimageinsight.embed_texts(texts)
            again = await clients.medimageinsight.embed_texts(texts[:1])
            return first, again

    first, again = asyncio.run(go())
    np.testing.assert_array_equal(first[0].text, again[0].text)
    assert np.linalg.norm(first[1].text) == pytest.approx(1.0, abs=1e-5)
    assert abs(float(first[0].text @ first[1].text)) < 0.2


def test_cxr_boxes_sit_on_the_bright_content(emulator: Start, chest_png: bytes) -> None:
    """Grounded findings have boxes on the 0.01 grid offset 0.005 that, mapped back with the
    centre-crop convention, cover the bright block of the frontal image; the draft says it
    comes from an emulator."""
    server = emulator()

    async def go() -> Any:
        async with build_clients(ModelsSettings(), server.url) as clients:
            return await clients.cxrreportgen.generate(chest_png, indication="Cough")

    report = asyncio.run(go())
    assert report.findings[0].text == EMULATOR_SENTENCE
    grounded = [finding for finding in report.findings if finding.boxes]
    assert len(grounded) == 1 and "right" in grounded[0].text
    box = grounded[0].boxes[0]
    for value in (box.x_min, box.y_min, box.x_max, box.y_max):
        assert round(value * 1000) % 10 == 5 and 0 < value < 1
    side, width, height = 300, 400, 300  # the block is rows 50..250, columns 60..150
    x0 = box.x_min * side + (width - side) // 2
    x1 = box.x_max * side + (width - side) // 2
    y0 = box.y_min * side + (height - side) // 2
    y1 = box.y_max * side + (height - side) // 2
    assert 55 <= x0 <= 65 and 145 <= x1 <= 155
    assert 45 <= y0 <= 55 and 245 <= y1 <= 255


def test_parse_masks_follow_intensity_and_name_categories(
    emulator: Start, parse_png: bytes
) -> None:
    """Each prompt gets a 0/255 1024×1024 mask covering one intensity band of the image (here a
    band of columns of the ramp), and a category among the 16 taken from its words."""
    server = emulator()
    prompts = ["liver tumor", "left lung", "spleen", "something else"]

    async def go() -> Any:
        async with build_clients(ModelsSettings(), server.url) as clients:
            return await clients.medimageparse.segment(parse_png, prompts)

    result = asyncio.run(go())
    assert result.masks.shape == (4, 1024, 1024)
    assert set(np.unique(result.masks)) <= {0, 255}
    assert result.categories == ("tumor", "lung", "other organ", "other")
    assert set(result.categories) <= set(PARSE_CATEGORIES)
    for mask in result.masks:
        columns = np.nonzero(mask.any(axis=0))[0]
        assert columns.size > 100
        assert columns.max() - columns.min() + 1 == columns.size  # one contiguous band
        assert (mask[:, columns] == 255).all()  # every row of the band: it follows the ramp


def test_parse3d_labels_follow_prompt_order_and_geometry(emulator: Start, nifti_gz: bytes) -> None:
    """The label volume has the input's shape and affine, labels 1..N in prompt order, rising
    with the input intensity."""
    server = emulator()

    async def go() -> Any:
        async with build_clients(ModelsSettings(), server.url) as clients:
            return await clients.medimageparse3d.segment(nifti_gz, ["liver", "spleen", "kidney"])

    result = asyncio.run(go())
    source = nib.Nifti1Image.from_bytes(gzip.decompress(nifti_gz))
    volume = np.asarray(source.dataobj)
    assert result.labels.shape == volume.shape
    np.testing.assert_allclose(result.affine, source.affine)
    assert set(np.unique(result.labels)) == {0, 1, 2, 3}
    means = [volume[result.labels == label].mean() for label in range(4)]
    assert means == sorted(means)


def test_identity_says_emulated(emulator: Start, chest_png: bytes) -> None:
    """Clients pointed at the emulator report emulated identities, and a transport that was not
    told learns it from the emulator's response header."""
    server = emulator()
    clients = build_clients(ModelsSettings(), server.url)
    identity = clients.cxrreportgen.identity
    assert identity.emulated and identity.version.startswith("emulator-")
    asyncio.run(clients.aclose())
    transport = ModelTransport(
        "cxrreportgen", ModelSettings(endpoint=f"{server.url}/cxrreportgen/score")
    )
    assert not transport.identity.emulated
    body = {
        "input_data": {
            "columns": ["frontal_image"],
            "index": [0],
            "data": [[base64.b64encode(chest_png).decode()]],
        }
    }

    async def go() -> None:
        await transport.score(body)
        await transport.aclose()

    asyncio.run(go())
    assert transport.identity.emulated


def test_a_model_without_endpoint_needs_the_emulator() -> None:
    """With no endpoint and no emulator URL, building the clients fails naming the setting."""
    with pytest.raises(ConfigError, match=r"models\.medimageinsight\.endpoint"):
        build_clients(ModelsSettings(), None)


def test_rgb_and_jpeg_inputs_are_accepted(emulator: Start) -> None:
    """The emulator reads RGB PNG and JPEG images, as the real service does."""
    server = emulator()
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[4:20, 4:20] = (200, 100, 50)
    jpeg = io.BytesIO()
    Image.fromarray(rgb).save(jpeg, format="JPEG", quality=75)
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")

    async def go() -> list[Any]:
        async with build_clients(ModelsSettings(), server.url) as clients:
            return await clients.medimageinsight.embed_images([png.getvalue(), jpeg.getvalue()])

    from_png, from_jpeg = asyncio.run(go())
    assert float(from_png.image @ from_jpeg.image) > 0.95
