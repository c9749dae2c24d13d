"""Fixtures for the model client and emulator tests: images, emulators on loopback ports, fast
backoff timing."""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable, Iterator
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from listener.asgi import BackgroundServer
from listener.emulator import create_app
from listener.infer.resilience import CallBackoff
from listener.settings import EmulatorSettings


def _png(pixels: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def png() -> Callable[[np.ndarray[Any, Any]], bytes]:
    """Encode a uint8 array (H×W gray or H×W×3 RGB) as PNG bytes."""
    return _png


@pytest.fixture
def chest_png() -> bytes:
    """A 300×400 gray image, dark except a bright block on the image's left half."""
    pixels = np.full((300, 400), 20, dtype=np.uint8)
    pixels[50:250, 60:150] = 200
    return _png(pixels)


@pytest.fixture
def parse_png() -> bytes:
    """A 1024×1024 RGB image with a horizontal intensity ramp (content everywhere but column 0)."""
    ramp = np.tile(np.linspace(0, 255, 1024), (1024, 1)).astype(np.uint8)
    return _png(np.stack([ramp] * 3, axis=-1))


@pytest.fixture
def nifti_gz() -> bytes:
    """A small gzip-compressed NIfTI volume (10×12×8) with a smooth intensity gradient."""
    x, y, z = np.meshgrid(np.arange(10), np.arange(12), np.arange(8), indexing="ij")
    volume = (x * 10 + y * 3 + z).astype(np.float32)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    return gzip.compress(nib.Nifti1Image(volume, affine).to_bytes())


@pytest.fixture
def emulator() -> Iterator[Callable[..., BackgroundServer]]:
    """Start emulators on free loopback ports (settings as keyword arguments); stop them after."""
    servers: list[BackgroundServer] = []

    def start(**settings: Any) -> BackgroundServer:
        server = BackgroundServer(create_app(EmulatorSettings(**settings)))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def fast_backoff() -> CallBackoff:
    """CallBackoff timing scaled down so retried tests finish quickly."""
    return CallBackoff(initial_s=0.005, max_s=0.05, max_retry_after_s=5.0)
