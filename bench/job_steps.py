"""The CPU steps of a chest CR's two jobs and of a CT's result objects, one process, no peers.

What each step is, best of ``--repeat`` calls after one warm-up call:

* chest CR (``RG1_UNCR.dcm``, 1841×1955): display values (own window); the CXRReportGen image
  (8-bit gray PNG, native size); the MedImageInsight image (480×480 RGB PNG); base64 of the
  CXRReportGen PNG; the report SR + presentation state with their gates (three findings, three
  boxes); the classification SR with its gate (three labels);
* CT of ``--slices`` synthetic 512×512 CHEST slices: the SEG, its gate, the SEG-linked TID 1500
  SR (the masks of ``bench/results_build.py``), its gate, and MedImageParse preparation of 20
  slices. The SR's SHA-256 is printed, so two trees can be shown to build the same bytes.

``--tree`` runs another checkout's code (e.g. an exported older commit) with this script, for
before/after figures in one session::

    .venv/bin/python bench/job_steps.py --slices 200 --repeat 3
    .venv/bin/python bench/job_steps.py --slices 200 --repeat 3 --tree /path/to/older/export
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

LABELS = ("normal chest radiograph", "pneumonia", "pleural effusion")


@contextmanager
def timed(times: dict[str, list[float]], name: str) -> Iterator[None]:
    """Add the wall time of the block to ``times[name]``."""
    start = time.perf_counter()
    yield
    times.setdefault(name, []).append(time.perf_counter() - start)


def cr_steps(repeat: int) -> dict[str, list[float]]:
    """The chest CR's steps (see the module docstring)."""
    import numpy as np
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from result_cases import findings_for, frontal_of, provenance

    from converters.intensity import IntensityPolicy, display_pixels
    from converters.model_outputs import Embeddings
    from converters.prepare import ImageModel, prepare_image
    from converters.results import build_classification_results, build_report_results
    from listener.infer.wire import encode_b64

    path = get_testdata_file("RG1_UNCR.dcm")
    assert path is not None, "install the dev dependency pydicom-data"
    ds = dcmread(path)
    sources = [ds]
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(4, 1024))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    embeddings = Embeddings(vectors[0].astype(np.float32), vectors[1:].astype(np.float32), 4.51)
    times: dict[str, list[float]] = {}
    policy = IntensityPolicy(percentiles=(0.01, 0.99))
    frontal = frontal_of(sources)
    for _ in range(repeat + 1):
        with timed(times, "CR display values (window)"):
            display_pixels(ds, 0, policy)
        with timed(times, "CR CXRReportGen image"):
            cxr = prepare_image(ds, ImageModel.CXRREPORTGEN)
        with timed(times, "CR MedImageInsight image"):
            prepare_image(ds, ImageModel.MEDIMAGEINSIGHT)
        with timed(times, "CR base64 of the PNG"):
            encode_b64(cxr.png)
        with timed(times, "CR report SR + GSPS, gates"):
            build_report_results(sources, frontal, findings_for(ds), provenance("cxrreportgen"))
        with timed(times, "CR classification SR, gate"):
            build_classification_results(
                sources, frontal, LABELS, embeddings, provenance("medimageinsight")
            )
    return times


def ct_steps(slices: int, repeat: int) -> tuple[dict[str, list[float]], str]:
    """The CT's result steps and the SR's digest (see the module docstring)."""
    import factory
    from results_build import PROMPTS, phantom_masks

    from converters.check import check_result, checked_bytes
    from converters.model_outputs import ModelIdentity
    from converters.prepare import ImageModel, prepare_image
    from converters.provenance import Provenance
    from converters.seg import SourceMasks, build_seg
    from converters.sr import build_seg_sr

    sources = factory.ct_series(slices, rows=512, cols=512, uid_seed="steps", body_part="CHEST")
    masks = SourceMasks(PROMPTS, phantom_masks(slices, 512, 512))
    provenance = Provenance(
        ModelIdentity("medimageparse", "bench"), "bench", "0.1.0", datetime(2026, 1, 1)
    )
    times: dict[str, list[float]] = {}
    digest = ""
    for _ in range(repeat + 1):
        with timed(times, "CT SEG"):
            outcome = build_seg(sources, masks, provenance)
        assert outcome.seg is not None
        with timed(times, "CT SEG gate"):
            seg = check_result(outcome.seg, sources)
        with timed(times, "CT SR (TID 1500)"):
            sr = build_seg_sr(sources, outcome, provenance)
        with timed(times, "CT SR gate"):
            check_result(sr, sources, companions=[seg])
        with timed(times, "CT prepare 20 slices"):
            for ds in sources[:20]:
                prepare_image(ds, ImageModel.MEDIMAGEPARSE, preset="ct-lung")
        digest = hashlib.sha256(checked_bytes(sr)).hexdigest()[:16]
    return times, digest


def main() -> None:
    """Run the steps and print the best time of each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    tree = args.tree.resolve()
    sys.path[:0] = [str(tree / "tests" / "converters"), str(tree / "tests"), str(tree)]
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # results_build's phantom masks
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"tree {tree}, load average {load}")
    times = cr_steps(args.repeat)
    ct_times, digest = ct_steps(args.slices, args.repeat)
    for name, values in {**times, **ct_times}.items():
        print(f"{name:32} {min(values[1:]):7.3f} s")
    print(f"CT SR sha256 {digest}")


if __name__ == "__main__":
    main()
