"""Time to build a 200-slice CT's result objects and model inputs, against writing them raw.

    .venv/bin/python bench/results_build.py --slices 200 --size 512 --repeat 3

Sources: a synthetic CHEST CT series (tests/factory.py). Masks: the phantom's body outline on
every slice and its lesion on the middle third, as MedImageParse would return for two prompts
("lung", "tumor"); a third prompt ("nodule") comes back empty, so the SR also holds an "Absent"
group. Two measurements, each the best of ``--repeat`` runs:

* "results": build_seg, the gate on the SEG, build_seg_sr and the gate on the SR (the work of
  converters.results.build_parse_results); peer: ``np.save`` of the same masks to a file.
* "prepare": prepare_image for MedImageParse (ct-lung preset; the slices' own window wins) on
  every slice; peer: Pillow writing each slice's windowed 8-bit pixels as a PNG at its native
  size with default settings (what a script that only wanted the pixels out would do).

The phantom's flat regions compress far better than a real CT; ``--noise 20`` adds Gaussian
noise of that many HU, which is closer to real slices for the PNG encoding cost.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import factory
from pydicom import Dataset

from converters.check import check_result
from converters.intensity import IntensityPolicy, display_pixels
from converters.model_outputs import ModelIdentity
from converters.prepare import ImageModel, prepare_image
from converters.provenance import Provenance
from converters.seg import Prompt, SourceMasks, build_seg
from converters.sr import build_seg_sr

PROMPTS = (Prompt("lung", "organ"), Prompt("tumor", "tumor"), Prompt("nodule", "tumor"))


def phantom_masks(n: int, rows: int, cols: int) -> npt.NDArray[np.bool_]:
    """(3, n, rows, cols): body outline everywhere, lesion on the middle third, nothing."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    body = ((yy - rows / 2) / (rows * 0.42)) ** 2 + ((xx - cols / 2) / (cols * 0.45)) ** 2 <= 1
    masks = np.zeros((len(PROMPTS), n, rows, cols), dtype=np.bool_)
    masks[0] = body
    masks[1, n // 3 : 2 * n // 3] = factory.lesion_mask(rows, cols)
    return masks


def add_noise(sources: list[Dataset], sigma: float) -> None:
    """Gaussian noise on the stored values (seeded), so slices compress like a real CT's."""
    rng = np.random.default_rng(0)
    for ds in sources:
        pixels = np.frombuffer(ds.PixelData, dtype=np.int16).reshape(ds.Rows, ds.Columns)
        noisy = pixels + rng.normal(0.0, sigma, pixels.shape)
        ds.PixelData = np.rint(noisy).astype(np.int16).tobytes()


def best_of(action: Callable[[], object], repeat: int) -> float:
    """Best wall time of ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best


def build_results(
    sources: list[Dataset], masks: SourceMasks, provenance: Provenance
) -> list[Dataset]:
    """SEG and SEG-linked SR, each through the gate."""
    outcome = build_seg(sources, masks, provenance)
    assert outcome.seg is not None
    seg = check_result(outcome.seg, sources)
    sr = check_result(build_seg_sr(sources, outcome, provenance), sources, companions=[seg])
    return [seg, sr]


def plain_pngs(sources: list[Dataset], folder: Path) -> None:
    """Each slice's display pixels written by Pillow as a native-size PNG."""
    policy = IntensityPolicy(preset="ct-lung")
    for index, ds in enumerate(sources):
        Image.fromarray(display_pixels(ds, 0, policy)).save(folder / f"{index}.png")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--noise", type=float, default=0.0, help="HU of Gaussian noise to add")
    args = parser.parse_args(argv)
    sources = factory.ct_series(args.slices, rows=args.size, cols=args.size, body_part="CHEST")
    if args.noise:
        add_noise(sources, args.noise)
    masks = SourceMasks(PROMPTS, phantom_masks(args.slices, args.size, args.size))
    provenance = Provenance(
        ModelIdentity("medimageparse", "bench"), "bench", "0.1.0", datetime(2026, 1, 1)
    )
    png_bytes = sum(
        len(prepare_image(ds, ImageModel.MEDIMAGEPARSE, preset="ct-lung").png) for ds in sources
    )
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        rows = [
            (
                "results (SEG + SR + gate)",
                best_of(lambda: build_results(sources, masks, provenance), args.repeat),
                best_of(lambda: np.save(folder / "masks.npy", masks.masks), args.repeat),
            ),
            (
                f"prepare {args.slices} slices",
                best_of(
                    lambda: [
                        prepare_image(ds, ImageModel.MEDIMAGEPARSE, preset="ct-lung")
                        for ds in sources
                    ],
                    args.repeat,
                ),
                best_of(lambda: plain_pngs(sources, folder), args.repeat),
            ),
        ]
    print(f"{args.slices} slices of {args.size} x {args.size}, best of {args.repeat}")
    print(f"{'':28} {'time s':>8} {'peer s':>8} {'ratio':>7}")
    for label, took, peer in rows:
        print(f"{label:28} {took:8.3f} {peer:8.3f} {took / peer:7.1f}")
    print(f"MedImageParse PNGs: {png_bytes / 2**20:.1f} MiB for {args.slices} slices")


if __name__ == "__main__":
    main()
