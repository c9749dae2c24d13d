"""The SEG build's memory: no whole-stack temporary beyond the masks, and the same object as
highdicom's own constructor builds (Segments Overlap included)."""

from __future__ import annotations

import tracemalloc

import factory
import highdicom as hd
import numpy as np
import pytest
from result_cases import provenance

import converters.seg
from converters.check import encode
from converters.seg import Prompt, SourceMasks, build_seg

PROMPTS = (Prompt("lung", "lung"), Prompt("tumor", "tumor"), Prompt("heart", "heart anatomies"))
SLICES, SIZE = 24, 128


def _masks(overlap: bool) -> np.ndarray:  # type: ignore[type-arg]
    masks = np.zeros((len(PROMPTS), SLICES, SIZE, SIZE), dtype=np.bool_)
    masks[0, :, 10:60, 10:60] = True
    masks[1, 4:12, 70:90, 70:90] = True
    masks[2, :, 100:120, 5:50] = True
    if overlap:
        masks[1, 6, 20:30, 20:30] = True  # a lesion inside the lung segment
    return masks


@pytest.mark.parametrize("overlap", [False, True])
def test_seg_is_byte_identical_to_highdicoms_own_build(
    overlap: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The frame-by-frame overlap check gives the SEG highdicom's constructor gives, byte for
    byte, with overlapping segments (Segments Overlap YES) and without (NO)."""
    sources = factory.ct_series(SLICES, rows=SIZE, cols=SIZE, uid_seed="seg-memory")
    masks = SourceMasks(PROMPTS, _masks(overlap))
    ours = build_seg(sources, masks, provenance()).seg
    monkeypatch.setattr(converters.seg, "_Segmentation", hd.seg.Segmentation)
    stock = build_seg(sources, masks, provenance()).seg
    assert ours is not None and stock is not None
    assert ours.SegmentsOverlap == ("YES" if overlap else "NO")
    assert encode(ours) == encode(stock)


def test_seg_build_allocates_less_than_the_masks_it_encodes() -> None:
    """Building the SEG allocates, at its peak, less than the mask stack itself (highdicom 0.28's
    overlap check alone allocates 8 bytes per pixel position, 2.7x a 3-segment stack)."""
    sources = factory.ct_series(SLICES, rows=SIZE, cols=SIZE, uid_seed="seg-memory")
    masks = _masks(overlap=False)
    build_seg(sources, SourceMasks(PROMPTS, masks), provenance())  # imports and caches warm
    tracemalloc.start()
    try:
        build_seg(sources, SourceMasks(PROMPTS, masks), provenance())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < masks.nbytes
