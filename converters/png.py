"""A fast lossless PNG writer for 8-bit gray and RGB frames (ISO/IEC 15948, W3C PNG 2nd ed.).

Pillow's PNG encoder tries every row filter on every row to pick one (adaptive filtering),
which costs more than the compression itself: 0.2-0.3 s for a 1841 x 1955 chest radiograph even
at zlib level 0. The models only see the decoded pixels (docs/models.md §1.1, §2.1 and §3.1 ask
for lossless PNG), and every PNG decodes to the same pixels whatever its filters and zlib level,
so the filter is free to choose: here "Up" (type 2, the row above subtracted) on every row, at
zlib level 1, 2-8x faster than Pillow at its level 1 for files of about the same size
(bench/README.md, "Whole loop").

The deflate stream is written by ISA-L (the ``isal`` package, Intel's SIMD deflate): a standard
zlib stream that any inflater reads, about four times faster than zlib at level 1 and a little
smaller (a chest radiograph's 3.6 MB of scanlines: 10 ms and 1.52 MB against 40 ms and 1.57 MB).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import numpy.typing as npt
from isal import isal_zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFLATE_LEVEL = 1  # ISA-L's levels run 0-3; 1 is its fast default
FILTER_UP = 2  # PNG filter type 2: Up(x) = Raw(x) - Prior(x), modulo 256
_GRAY, _RGB = 0, 2  # colour types: greyscale, truecolour


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One chunk: length, type, data and the CRC-32 of type and data (PNG §5.3)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def up_filtered(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The PNG scanlines of 8-bit ``pixels`` (rows, cols[, 3]) before deflate: each row its
    filter-type byte and the row minus the row above (PNG §9.2, "Up")."""
    rows = pixels.shape[0]
    raw = np.ascontiguousarray(pixels).reshape(rows, -1)
    scanlines = np.empty((rows, raw.shape[1] + 1), dtype=np.uint8)
    scanlines[:, 0] = FILTER_UP
    scanlines[:1, 1:] = raw[:1]  # the first row's prior row is all zeros
    np.subtract(raw[1:], raw[:-1], out=scanlines[1:, 1:])  # uint8 arithmetic wraps modulo 256
    return scanlines


def png_bytes(pixels: npt.NDArray[np.uint8]) -> bytes:
    """The PNG of ``pixels``: (rows, cols) 8-bit grayscale or (rows, cols, 3) 8-bit RGB,
    non-interlaced, every row filtered with "Up"."""
    if pixels.dtype != np.uint8 or not (
        pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)
    ):
        raise ValueError(f"8-bit gray or RGB pixels expected, got {pixels.dtype} {pixels.shape}")
    rows, cols = pixels.shape[:2]
    scanlines = up_filtered(pixels)
    colour = _GRAY if pixels.ndim == 2 else _RGB
    header = struct.pack(">IIBBBBB", cols, rows, 8, colour, 0, 0, 0)
    return b"".join(
        [
            SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", isal_zlib.compress(scanlines.data, DEFLATE_LEVEL)),
            _chunk(b"IEND", b""),
        ]
    )
