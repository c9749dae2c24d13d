"""MedImageParse masks to SEG: geometry per source kind, segments, misses, phantom round trip."""

from __future__ import annotations

from pathlib import Path

import factory
import highdicom as hd
import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage
from result_cases import (
    SOURCE_KINDS,
    block_masks,
    dciodvfy,
    load_sources,
    masks_read_back,
    provenance,
    write,
)

from converters.codes import segment_property
from converters.geometry import mask_to_model, mask_to_source, pad_square_map
from converters.results import build_parse_results
from converters.seg import Prompt, SourceMasks, build_seg

PROMPTS = (
    Prompt("liver", "liver"),
    Prompt("tumor in the liver", "tumor"),
    Prompt("left kidney", "kidney"),
)


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_seg_builds_validates_and_reads_back_the_masks(kind: str, tmp_path: Path) -> None:
    """Each source kind gives a dciodvfy-clean BINARY SEG whose masks read back unchanged."""
    sources = load_sources(kind)
    masks = block_masks(sources, len(PROMPTS))
    results = build_parse_results(sources, SourceMasks(PROMPTS, masks), provenance())
    seg = results.objects[0]
    assert results.seg_built and seg.SOPClassUID == SegmentationStorage
    assert seg.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert seg.SegmentationType == "BINARY"
    path = write(seg, tmp_path, "seg")
    dciodvfy(path)
    back = masks_read_back(path, sources, 2)
    assert np.array_equal(back, masks[:2])
    assert results.not_found == (PROMPTS[2],)


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_seg_references_every_source_instance(kind: str) -> None:
    """The SEG's Referenced Series Sequence lists every source instance, in the source study."""
    sources = load_sources(kind)
    outcome = build_seg(
        sources, SourceMasks(PROMPTS, block_masks(sources, len(PROMPTS))), provenance()
    )
    assert outcome.seg is not None
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in outcome.seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in sources}
    assert outcome.seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert outcome.seg.PatientID == sources[0].PatientID


def test_segments_are_labelled_coded_and_automatic(tmp_path: Path) -> None:
    """Each segment carries the prompt as label, SNOMED codes, AUTOMATIC and the algorithm."""
    sources = load_sources("ct_series")
    masks = block_masks(sources, 3)
    masks[2, 30, 5:9, 5:9] = True  # every prompt found something this time
    outcome = build_seg(sources, SourceMasks(PROMPTS, masks), provenance())
    assert outcome.seg is not None and outcome.not_found == ()
    seg = hd.seg.segread(write(outcome.seg, tmp_path, "seg"))
    for number, prompt in enumerate(PROMPTS, start=1):
        description = seg.get_segment_description(number)
        expected = segment_property(prompt.category)
        assert description.segment_label == prompt.text
        assert description.segmented_property_type == expected.type
        assert description.segmented_property_category == expected.category
        assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        algorithm = description.algorithm_identification[0]
        assert algorithm.AlgorithmName == "MedImageParse"
        assert algorithm.AlgorithmVersion == "emulator-1"
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert outcome.seg.SeriesDescription == "AI MedImageParse SEG (emulator)"
    assert outcome.seg.Manufacturer == "pacs-ai-listener"
    assert list(outcome.seg.SoftwareVersions) == [
        "pacs-ai-listener 0.1.0",
        "medimageparse emulator-1",
    ]


def test_all_prompts_empty_builds_no_seg_but_records_the_misses() -> None:
    """When no prompt found anything there is no SEG; the SR alone lists every prompt as absent."""
    sources = load_sources("mr_small")
    empty = np.zeros((2, 1, sources[0].Rows, sources[0].Columns), dtype=np.bool_)
    results = build_parse_results(sources, SourceMasks(PROMPTS[:2], empty), provenance())
    assert not results.seg_built
    assert results.not_found == PROMPTS[:2]
    assert [ds.Modality for ds in results.objects] == ["SR"]


def test_masks_of_the_wrong_shape_are_refused() -> None:
    """Masks that do not match the sources' frames or size raise instead of building a SEG."""
    sources = load_sources("ct_series")
    wrong = np.ones((1, 63, sources[0].Rows, sources[0].Columns), dtype=np.bool_)
    with pytest.raises(ValueError, match="shape"):
        build_seg(sources, SourceMasks(PROMPTS[:1], wrong), provenance())


def test_phantom_lesion_segment_sits_on_the_lesion_after_model_space(tmp_path: Path) -> None:
    """The lesion mapped to the 1024 model frame and back is segmented on exactly its pixels."""
    rows, cols, n = 72, 96, 9
    sources = factory.ct_series(n, rows=rows, cols=cols)
    lesion = factory.lesion_mask(rows, cols)
    grid = pad_square_map(rows, cols)
    on_slice = [n // 3 <= i < 2 * n // 3 for i in range(n)]
    model_masks = [
        np.where(mask_to_model(lesion, grid), 255, 0).astype(np.uint8)
        if present
        else np.zeros((1024, 1024), dtype=np.uint8)
        for present in on_slice
    ]
    source_masks = np.stack([mask_to_source(m, grid) for m in model_masks])[np.newaxis]
    outcome = build_seg(
        sources, SourceMasks((Prompt("lesion", "other lesion"),), source_masks), provenance()
    )
    assert outcome.seg is not None
    back = masks_read_back(write(outcome.seg, tmp_path, "seg"), sources, 1)[0]
    expected = np.stack([lesion if present else np.zeros_like(lesion) for present in on_slice])
    assert np.array_equal(back, expected)
    # and the lesion is where the phantom's bright pixels are
    assert np.array_equal(factory.ct_phantom(rows, cols, n // 2, n) == 1300, lesion)
