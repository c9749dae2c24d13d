"""The byte codecs on a model call's path, the gateway's choice against the standard library's.

Per call, the gateway writes the PNG of each frame (deflate), sends it as MIME base64 and reads
MedImageParse's masks back from base64; the emulator reads the MIME base64 of each request.
Measured on real payloads: the chest radiograph ``RG1_UNCR.dcm`` (1841 x 1955) prepared for
CXRReportGen (8-bit gray, native size) and for MedImageParse (1024 x 1024 RGB), and a
two-prompt MedImageParse answer (2 x 1024 x 1024 bytes). Each line checks that both sides give
the same bytes (or, for deflate, the same inflated scanlines) before timing them.

    .venv/bin/python bench/codecs.py --runs 3
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pybase64
from isal import isal_zlib
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from converters.intensity import IntensityPolicy, display_pixels  # noqa: E402
from converters.png import DEFLATE_LEVEL, up_filtered  # noqa: E402
from converters.prepare import ImageModel, prepare_image  # noqa: E402
from listener.infer.wire import decode_b64, encode_b64  # noqa: E402


def _best_ms(work: Callable[[], object], repeat: int = 20) -> float:
    """The median of ``repeat`` timings of ``work``, in milliseconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    """Time each codec pair on real payloads and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    path = get_testdata_file("RG1_UNCR.dcm")
    assert isinstance(path, str)
    source = dcmread(path)
    cr = display_pixels(source, 0, IntensityPolicy(preset=None, percentiles=(0.01, 0.99)))
    frame = np.asarray(
        Image.open(io.BytesIO(prepare_image(source, ImageModel.MEDIMAGEPARSE).png)), np.uint8
    )
    png = prepare_image(source, ImageModel.CXRREPORTGEN).png
    mask = np.random.default_rng(0).integers(0, 2, (2, 1024, 1024), dtype=np.uint8) * 255
    mask_b64 = base64.b64encode(mask.tobytes()).decode()
    mime = base64.encodebytes(png).decode()

    assert decode_b64(mask_b64) == base64.b64decode(mask_b64, validate=True)
    assert encode_b64(png) == mime
    assert decode_b64(mime) == png
    cases: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        (
            "answer mask, base64 decode (2.8 MB)",
            lambda: base64.b64decode(mask_b64, validate=True),
            lambda: decode_b64(mask_b64),
        ),
        (
            f"request PNG, MIME base64 encode ({len(png) / 1e6:.1f} MB)",
            lambda: base64.encodebytes(png),
            lambda: encode_b64(png),
        ),
        (
            "request PNG, MIME base64 decode (emulator)",
            lambda: base64.b64decode("".join(mime.split()), validate=True),
            lambda: decode_b64(mime),
        ),
    ]
    scanlines = {
        "CR": up_filtered(cr).tobytes(),
        "CR for MedImageParse, 1024x1024 RGB": up_filtered(frame).tobytes(),
    }
    for name, lines in scanlines.items():
        assert zlib.decompress(isal_zlib.compress(lines, DEFLATE_LEVEL)) == lines
        cases.append(
            (
                f"PNG deflate, {name} ({len(lines) / 1e6:.1f} MB of scanlines)",
                lambda lines=lines: zlib.compress(lines, 1),  # type: ignore[misc]
                lambda lines=lines: isal_zlib.compress(lines, DEFLATE_LEVEL),  # type: ignore[misc]
            )
        )
    print("| step | standard library | gateway | speed-up |")
    print("|---|---|---|---|")
    for name, stock, ours in cases:
        before = [_best_ms(stock) for _ in range(args.runs)]
        after = [_best_ms(ours) for _ in range(args.runs)]
        b, a = statistics.median(before), statistics.median(after)
        print(f"| {name} | {b:.2f} ms | {a:.2f} ms | {b / a:.0f}x |")
    for name, lines in scanlines.items():
        print(
            f"size, {name}: zlib level 1 {len(zlib.compress(lines, 1)):,} bytes, "
            f"ISA-L level {DEFLATE_LEVEL} {len(isal_zlib.compress(lines, DEFLATE_LEVEL)):,} bytes"
        )
    print(f"pybase64 {pybase64.__version__}")


if __name__ == "__main__":
    main()
