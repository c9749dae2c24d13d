"""TID 1500 SRs: the CXR draft report, zero-shot classification, the SEG link, and the gate."""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom import Dataset
from result_cases import (
    SOURCE_KINDS,
    block_masks,
    dciodvfy,
    findings_for,
    frontal_of,
    load_sources,
    provenance,
    rectangle,
    root_evaluations,
    write,
)

from converters.check import ResultCheckError, check_result
from converters.codes import NOT_DETECTED, PROBABILITY, TOP_LABEL, YES, segment_property
from converters.insight import zero_shot_probabilities
from converters.model_outputs import Embeddings
from converters.provenance import set_fresh
from converters.results import (
    build_classification_results,
    build_parse_results,
    build_report_results,
)
from converters.seg import Prompt, SourceMasks

IMAGING_MEASUREMENTS = "126010"  # TID 1500 row 6
TEXT_CODE = "C0034375"  # Qualitative Evaluations, the concept of our TEXT items
LABELS = ("normal chest radiograph", "pneumonia", "pleural effusion")


def texts_of(item: Dataset) -> list[str]:
    """TEXT "Qualitative Evaluations" values directly under a content item."""
    return [
        str(child.TextValue)
        for child in item.get("ContentSequence", [])
        if child.ValueType == "TEXT" and child.ConceptNameCodeSequence[0].CodeValue == TEXT_CODE
    ]


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_report_sr_validates_and_reads_back_findings_and_boxes(kind: str, tmp_path: Path) -> None:
    """The draft report SR is clean, unverified and partial, with each finding and box intact."""
    sources = load_sources(kind)
    frontal = frontal_of(sources)
    findings = findings_for(frontal.image)
    objects = build_report_results(sources, frontal, findings, provenance("cxrreportgen"))
    path = write(objects[0], tmp_path, "sr")
    dciodvfy(path)
    sr = hd.sr.srread(path)
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "PARTIAL"
    assert sr.StudyInstanceUID == sources[0].StudyInstanceUID
    planar = sr.content.get_planar_roi_measurement_groups()
    assert len(planar) == 3
    boxes = [findings[1].boxes[0], findings[1].boxes[1], findings[2].boxes[0]]
    for group, box, text in zip(
        planar, boxes, [findings[1].text] * 2 + [findings[2].text], strict=True
    ):
        assert np.allclose(group.roi.value, rectangle(box))
        assert group.roi.GraphicType == "POLYLINE"
        assert (
            group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            == frontal.image.SOPInstanceUID
        )
        assert texts_of(group[0]) == [text]
    # Beside boxed findings, the unboxed one is a root-level text (PixelMed).
    assert sr.content.get_image_measurement_groups() == []
    uids = [g.tracking_uid for g in planar]
    assert len(set(uids)) == 3
    root_texts = [
        child.TextValue
        for container in sr.ContentSequence
        if container.ValueType == "CONTAINER"
        and container.ConceptNameCodeSequence[0].CodeValue == TEXT_CODE
        for child in container.ContentSequence
    ]
    assert root_texts == [" ".join(f.text for f in findings), findings[0].text]


def test_report_sr_names_the_device_observer_and_algorithm() -> None:
    """The observer is the device (TID 1004) and each group names the algorithm (TID 4019)."""
    sources = load_sources("cr_chest")
    sr = build_report_results(
        sources, frontal_of(sources), findings_for(sources[0]), provenance("cxrreportgen")
    )[0]
    dump = sr.ContentSequence
    observer = [i for i in dump if i.ConceptNameCodeSequence[0].CodeValue == "121005"]
    assert observer and observer[0].ConceptCodeSequence[0].CodeMeaning == "Device"
    model_names = [
        str(i.TextValue) for i in dump if i.ConceptNameCodeSequence[0].CodeValue == "121015"
    ]
    assert model_names == ["CXRReportGen"]
    assert sr.SeriesDescription == "AI CXRReportGen SR (emulator)"


def test_zero_shot_probabilities_match_the_two_label_closed_form() -> None:
    """With two labels the softmax is a logistic of the scaled similarity difference."""
    image = np.array([0.6, 0.8])
    texts = np.array([[1.0, 0.0], [0.0, 1.0]])
    p = zero_shot_probabilities(image, texts, 4.5)
    expected = 1.0 / (1.0 + np.exp(-np.exp(4.5) * (0.6 - 0.8)))
    assert p[0] == pytest.approx(expected) and p.sum() == pytest.approx(1.0)


@given(
    st.lists(st.floats(-1, 1), min_size=3, max_size=3),
    st.lists(st.lists(st.floats(-1, 1), min_size=3, max_size=3), min_size=1, max_size=6),
    st.floats(0, 8),
)
def test_zero_shot_probabilities_are_a_distribution_led_by_the_best_match(
    image: list[float], texts: list[list[float]], scale: float
) -> None:
    """Probabilities are finite, sum to one, and the largest goes to the largest similarity."""
    p = zero_shot_probabilities(image, texts, scale)
    assert np.all(np.isfinite(p)) and p.sum() == pytest.approx(1.0)
    similarities = np.asarray(texts) @ np.asarray(image)
    assert similarities[int(np.argmax(p))] == pytest.approx(similarities.max())


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_classification_sr_records_each_label_probability(kind: str, tmp_path: Path) -> None:
    """One group per label holds its probability in UCUM "1"; only the top label is flagged."""
    sources = load_sources(kind)
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(4, 1024))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    embeddings = Embeddings(vectors[0].astype(np.float32), vectors[1:].astype(np.float32), 4.51)
    results = build_classification_results(
        sources, frontal_of(sources), LABELS, embeddings, provenance("medimageinsight")
    )
    path = write(results.objects[0], tmp_path, "sr")
    dciodvfy(path)
    groups = hd.sr.srread(path).content.get_image_measurement_groups()
    assert [g.finding_type.meaning for g in groups] == list(LABELS)
    top = int(np.argmax(results.probabilities))
    for i, group in enumerate(groups):
        (measurement,) = group.get_measurements(name=PROBABILITY)
        assert measurement.value == pytest.approx(results.probabilities[i])
        assert measurement.unit.value == "1"
        (flag,) = group.get_qualitative_evaluations(name=TOP_LABEL)
        assert (flag.value == YES) == (i == top)


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_seg_sr_links_segments_and_records_the_misses(kind: str, tmp_path: Path) -> None:
    """Volumetric groups reference the SEG's segments; the empty prompt is not detected."""
    sources = load_sources(kind)
    prompts = (Prompt("liver", "liver"), Prompt("mass", "tumor"), Prompt("stone", "other lesion"))
    results = build_parse_results(
        sources, SourceMasks(prompts, block_masks(sources, 3)), provenance()
    )
    seg, sr_ds = results.objects
    path = write(sr_ds, tmp_path, "sr")
    dciodvfy(path)
    sr = hd.sr.srread(path)
    volumetric = sr.content.get_volumetric_roi_measurement_groups()
    assert [g.referenced_segment.referenced_segment_numbers for g in volumetric] == [[1], [2]]  # type: ignore[union-attr]
    for group in volumetric:
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID  # type: ignore[union-attr]
    seg_tracking = [d.TrackingUID for d in seg.SegmentSequence]
    assert [g.tracking_uid for g in volumetric] == seg_tracking
    assert sr.content.get_image_measurement_groups() == []
    assert root_evaluations(sr) == misses_recorded(prompts[2:])


def misses_recorded(prompts: tuple[Prompt, ...]) -> tuple[list[tuple[str, str]], list[str]]:
    """The root-level items expected for prompts that found nothing, as root_evaluations reads."""
    model = provenance().model_name
    coded = [
        (segment_property(p.category, p.text).type.meaning, NOT_DETECTED.meaning) for p in prompts
    ]
    return coded, [f"{p.text}: not detected by the algorithm ({model})" for p in prompts]


def test_seg_sr_with_every_prompt_missed_records_them_all(tmp_path: Path) -> None:
    """With no SEG the SR has no measurement groups and lists every prompt as "Not detected"."""
    sources = load_sources("mr_small")
    prompts = (Prompt("stone", "other lesion"), Prompt("liver", "liver"), Prompt("cyst", "other"))
    empty = np.zeros((3, 1, sources[0].Rows, sources[0].Columns), dtype=np.bool_)
    results = build_parse_results(sources, SourceMasks(prompts, empty), provenance())
    (sr_ds,) = results.objects
    path = write(sr_ds, tmp_path, "sr")
    dciodvfy(path)
    sr = hd.sr.srread(path)
    assert IMAGING_MEASUREMENTS not in [
        i.ConceptNameCodeSequence[0].CodeValue for i in sr.ContentSequence
    ]
    assert root_evaluations(sr) == misses_recorded(prompts)


def test_gate_refuses_a_result_that_left_the_source_study() -> None:
    """A result whose study UID differs from the source's fails the self-check."""
    sources = load_sources("mr_small")
    sr = build_report_results(sources, frontal_of(sources), findings_for(sources[0]), provenance())[
        0
    ]
    set_fresh(sr, "StudyInstanceUID", "1.2.826.0.1.3680043.8.498.999")
    with pytest.raises(ResultCheckError, match="StudyInstanceUID"):
        check_result(sr, sources)


def test_gate_refuses_references_to_unknown_instances() -> None:
    """A SEG-linked SR checked without its SEG references an unknown instance and fails."""
    sources = load_sources("mr_small")
    prompts = (Prompt("liver", "liver"), Prompt("none", "other"))
    results = build_parse_results(
        sources, SourceMasks(prompts, block_masks(sources, 2)), provenance()
    )
    with pytest.raises(ResultCheckError, match="not among its sources"):
        check_result(results.objects[1], sources)
    assert check_result(results.objects[1], sources, companions=[results.objects[0]])


def test_building_results_leaves_the_sources_unchanged() -> None:
    """Every builder leaves the source datasets exactly as they were."""
    sources = load_sources("cr_chest")
    before = [copy.deepcopy(ds) for ds in sources]
    frontal = frontal_of(sources)
    build_report_results(sources, frontal, findings_for(sources[0]), provenance("cxrreportgen"))
    build_parse_results(
        sources, SourceMasks((Prompt("lung", "lung"),), block_masks(sources, 2)[:1]), provenance()
    )
    assert sources == before
