"""Time and peak memory to build a SEG, against writing the same masks as raw NumPy arrays.

    .venv/bin/python bench/seg_build.py --slices 300 --size 512 --segments 3

Sources: a synthetic CT series (tests/factory.py). Masks: the phantom's body outline, its
lesion (middle third of the slices) and a box, so some frames are empty as in real output.
"SEG" is build_seg (highdicom BINARY, bit-packed) plus the gate and writing the file; "npy" is
np.save of the same boolean array. Each is timed without tracing (best of ``--repeat``), then run
once more under tracemalloc for the peak of Python and NumPy allocations it makes. np.save
streams the array it is given and allocates next to nothing, so the memory ratio counts the
masks themselves (held in memory in both cases) on both sides: (peak + masks) / (peak + masks).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import factory

from converters.check import check_result, checked_bytes
from converters.model_outputs import ModelIdentity
from converters.provenance import Provenance
from converters.seg import Prompt, SourceMasks, build_seg

PROMPTS = (Prompt("body", "other organ"), Prompt("lesion", "tumor"), Prompt("box", "kidney"))


def phantom_masks(n: int, rows: int, cols: int, segments: int) -> npt.NDArray[np.bool_]:
    """(segments, n, rows, cols): body outline, lesion on the middle third, a box; repeated."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    body = ((yy - rows / 2) / (rows * 0.42)) ** 2 + ((xx - cols / 2) / (cols * 0.45)) ** 2 <= 1
    masks = np.zeros((segments, n, rows, cols), dtype=np.bool_)
    for s in range(segments):
        if s % 3 == 0:
            masks[s] = body
        elif s % 3 == 1:
            masks[s, n // 3 : 2 * n // 3] = factory.lesion_mask(rows, cols)
        else:
            masks[s, n // 4 : n // 2, rows // 2 : rows // 2 + rows // 8, cols // 5 : cols // 3] = (
                True
            )
    return masks


def measure(action: Callable[[], object], repeat: int) -> tuple[float, int]:
    """Best wall time of ``repeat`` runs, and the tracemalloc peak of one more run."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    tracemalloc.start()
    action()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return best, peak


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--segments", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    sources = factory.ct_series(args.slices, rows=args.size, cols=args.size)
    masks = phantom_masks(args.slices, args.size, args.size, args.segments)
    prompts = tuple(PROMPTS[i % 3] for i in range(args.segments))
    provenance = Provenance(
        ModelIdentity("medimageparse", "bench"), "bench", "0.1.0", datetime(2026, 1, 1)
    )
    with tempfile.TemporaryDirectory() as folder:
        seg_path, npy_path = Path(folder) / "seg.dcm", Path(folder) / "masks.npy"

        def build_and_write() -> None:
            seg = build_seg(sources, SourceMasks(prompts, masks), provenance).seg
            assert seg is not None
            seg_path.write_bytes(checked_bytes(check_result(seg, sources)))  # as the job writes

        seg_time, seg_peak = measure(build_and_write, args.repeat)
        npy_time, npy_peak = measure(lambda: np.save(npy_path, masks), args.repeat)
        seg_size, npy_size = seg_path.stat().st_size, npy_path.stat().st_size
    shape = f"{args.slices} x {args.size} x {args.size}, {args.segments} segments"
    print(f"masks: {shape}, {int(masks.sum())} voxels set")
    print(f"{'':6} {'time s':>8} {'peak MiB':>9} {'file MiB':>9}")
    for name, t, peak, size in (
        ("SEG", seg_time, seg_peak, seg_size),
        ("npy", npy_time, npy_peak, npy_size),
    ):
        print(f"{name:6} {t:8.3f} {peak / 2**20:9.1f} {size / 2**20:9.1f}")
    held = masks.nbytes
    print(
        f"ratio  {seg_time / npy_time:8.1f} {(seg_peak + held) / (npy_peak + held):9.2f} "
        f"{seg_size / npy_size:9.3f}   (memory ratio counts the {held / 2**20:.0f} MiB of masks)"
    )


if __name__ == "__main__":
    main()
