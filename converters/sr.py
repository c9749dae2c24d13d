"""TID 1500 Measurement Report documents (Comprehensive 3D SR), and the SEG-linked report.

Shared pieces for every SR the gateway writes (PS3.16 TID 1500 "Measurement Report"): the device
observer context (TID 1002/1004: the gateway and model, not a person), algorithm identification
(TID 4019), references to source images, free text next to coded content, and the document
itself, which is always left unverified and partial (PS3.3 C.17.2: Verification Flag UNVERIFIED,
Completion Flag PARTIAL), so nobody mistakes a draft from a model for a signed report.

:func:`build_seg_sr` links a SEG's segments from volumetric measurement groups (TID 1411
"Volumetric ROI Measurements", Referenced Segment) and records prompts that found nothing at the
document root, in TID 1500's "Qualitative Evaluations" container: the prompt's coded target
valued "Not detected" (SNOMED CT 260415000, a test result: the algorithm found no region; not
"Absent", which would state that the structure is missing) and a text naming the prompt and the
model. Kept out of Imaging Measurements, they are not mistaken for volumetric groups that lack a
region (TID 1411 rows 5, 7 and 10).

When the results replace an earlier generation (a follow-up with other inputs), the SR lists the
earlier SRs in its Predecessor Documents Sequence (PS3.3 C.17.2.3) and the whole earlier
generation in a root comment; :mod:`converters.kos` builds the rejection note for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from converters.codes import (
    ACQUISITION_MODALITIES,
    AI_FAMILY,
    COMMENT,
    DEVICE_OBSERVER,
    FINDING,
    IMAGING_PROCEDURE,
    MODALITY,
    NOT_DETECTED,
    QUALITATIVE_EVALUATIONS,
    SOURCE_IMAGE_FOR_SEGMENTATION,
    clip_text,
    segment_property,
)
from converters.provenance import (
    MANUFACTURER,
    UTF8,
    Provenance,
    ResultKind,
    ResultRef,
)
from converters.seg import Prompt, SegOutcome, segment_tracking_uid

IMAGE_LIBRARY = codes.DCM.ImageLibrary  # (111028, DCM), TID 1600 row 1
IMAGING_MEASUREMENTS = codes.DCM.ImagingMeasurements  # (126010, DCM), TID 1500 row 6

Group = (
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
)


def observation_context(provenance: Provenance) -> hd.sr.ObservationContext:
    """TID 1002 with a device observer (TID 1004): the gateway running the model."""
    return hd.sr.ObservationContext(observer_device_context=device_observer(provenance))


def device_observer(provenance: Provenance) -> hd.sr.ObserverContext:
    """The device observer (TID 1004): the gateway running the model."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=provenance.device_uid(),
        name=f"{MANUFACTURER} {provenance.model_name}",
        manufacturer_name=MANUFACTURER,
        model_name=provenance.model_name,
        serial_number=provenance.device_serial_number,
    )
    return hd.sr.ObserverContext(
        observer_type=DEVICE_OBSERVER, observer_identifying_attributes=device
    )


def sr_algorithm(provenance: Provenance) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification: model name, version, family (AI), rule as parameter."""
    return hd.sr.AlgorithmIdentification(
        name=provenance.model_name,
        version=clip_text(provenance.model.version),
        parameters=[clip_text(f"rule: {provenance.rule}")],
        family=AI_FAMILY,
        manufacturer=MANUFACTURER,
    )


def frame_numbers(image: Dataset) -> list[int] | None:
    """All 1-based frame numbers of a multi-frame image; None for a single-frame one."""
    frames = int(image.get("NumberOfFrames") or 1)
    return list(range(1, frames + 1)) if frames > 1 else None


def add_texts(group: Group, texts: Sequence[str], name: Code = QUALITATIVE_EVALUATIONS) -> None:
    """Append TEXT items (e.g. a finding sentence) to a measurement group's container.

    highdicom only takes coded qualitative evaluations; TID 1501/1410/1411 also allow them as
    TEXT, which is how a model's free-text finding is kept next to the coded content.
    """
    container = group[0]
    for text in texts:
        container.ContentSequence.append(
            hd.sr.TextContentItem(
                name=name, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
        )


def _library_images(images: Sequence[Dataset]) -> list[Dataset]:
    """The images highdicom can describe in the Image Library (TID 1600).

    The library is optional (TID 1500 row 5, U). highdicom's entry descriptors need attributes
    some real images lack (a CR without Imager Pixel Spacing), and an entry's Modality must be
    an acquisition modality (TID 1602 row 1, DCID 29), which the OT highdicom derives from a
    secondary capture's SOP class is not. Such images stay referenced from the measurement
    groups and the evidence sequence, just not listed in the library.
    """
    usable = []
    for image in images:
        try:
            entry = hd.sr.ImageLibraryEntryDescriptors(image)
        except (AttributeError, ValueError):
            continue
        modalities = [
            item.ConceptCodeSequence[0].CodeValue
            for item in entry
            if item.ConceptNameCodeSequence[0].CodeValue == MODALITY.value
        ]
        if all(value in ACQUISITION_MODALITIES for value in modalities):
            usable.append(image)
    return usable


def _library_modalities(report: hd.sr.MeasurementReport) -> list[str]:
    """The Modality code (TID 1602 row 1) of every entry in a report's Image Library."""
    values = []
    for item in report[0].ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue != IMAGE_LIBRARY.value:
            continue
        for group in item.ContentSequence:  # TID 1600 Image Library Groups
            for entry in group.get("ContentSequence", []):  # TID 1601 entries
                values += [
                    descriptor.ConceptCodeSequence[0].CodeValue
                    for descriptor in entry.get("ContentSequence", [])
                    if descriptor.ConceptNameCodeSequence[0].CodeValue == MODALITY.value
                ]
    return values


def _report_with_library(
    groups: Sequence[Group], provenance: Provenance, images: Sequence[Dataset], procedure: Code
) -> hd.sr.MeasurementReport:
    """The TID 1500 root whose image library lists the usable ``images``.

    Describing an image is the costly part of a library (about 4 ms an image), so the report
    is first built with every image, which is what happens for a usable series; only when
    that fails or lists a modality the library may not hold are the images sorted one by one
    (:func:`_library_images`) and the report built again.
    """

    def build(library: Sequence[Dataset]) -> hd.sr.MeasurementReport:
        return hd.sr.MeasurementReport(
            observation_context=observation_context(provenance),
            procedure_reported=procedure,
            imaging_measurements=list(groups),
            referenced_images=list(library) or None,
        )

    if images:
        try:
            report = build(images)
        except (AttributeError, ValueError):
            pass
        else:
            if all(value in ACQUISITION_MODALITIES for value in _library_modalities(report)):
                return report
    return build(_library_images(images))


def measurement_report(
    groups: Sequence[Group],
    provenance: Provenance,
    images: Sequence[Dataset],
    procedure: Code = IMAGING_PROCEDURE,
    root_texts: Sequence[tuple[Code, str]] = (),
    root_codes: Sequence[tuple[Code, Code]] = (),
) -> hd.sr.MeasurementReport:
    """The TID 1500 root with an image library of ``images`` and optional root-level content.

    Root-level content goes in the "Qualitative Evaluations" container of TID 1500 (row 12):
    ``root_codes`` as name-value CODE items (row 13), then ``root_texts`` as TEXT items
    (row 14). Without ``groups`` the report has no Imaging Measurements container, which
    TID 1500 allows when the Qualitative Evaluations one is there (row 6 is required only
    when neither row 10 nor row 12 is present).
    """
    if not groups and not (root_codes or root_texts):
        raise ValueError("a measurement report needs a group or a root-level evaluation")
    report = _report_with_library(groups or [_placeholder_group()], provenance, images, procedure)
    if not groups:
        root = report[0]
        root.ContentSequence = hd.sr.ContentSequence(
            [item for item in root.ContentSequence if not _is_imaging_measurements(item)]
        )
    if root_codes or root_texts:
        report[0].ContentSequence.append(_root_evaluations(root_codes, root_texts))
    return report


def _placeholder_group() -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A group that only lets highdicom build a report it insists on; removed right after."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="placeholder")
    )


def _is_imaging_measurements(item: Dataset) -> bool:
    """Whether a root content item is the Imaging Measurements container (TID 1500 row 6)."""
    return bool(item.ConceptNameCodeSequence[0].CodeValue == IMAGING_MEASUREMENTS.value)


def _root_evaluations(
    root_codes: Sequence[tuple[Code, Code]], root_texts: Sequence[tuple[Code, str]]
) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12 container holding CODE (row 13) and TEXT (row 14) items."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type=contains)
    items: list[hd.sr.ContentItem] = [
        hd.sr.CodeContentItem(name=name, value=value, relationship_type=contains)
        for name, value in root_codes
    ]
    items += [
        hd.sr.TextContentItem(name=name, value=text, relationship_type=contains)
        for name, text in root_texts
    ]
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def sr_document(
    evidence: Sequence[Dataset],
    report: hd.sr.MeasurementReport,
    provenance: Provenance,
    kind: ResultKind,
) -> Dataset:
    """A Comprehensive 3D SR holding ``report``: unverified, partial, preliminary, stamped."""
    images = [ds for ds in evidence if ds.Modality not in ("SEG", "SR")]
    if provenance.supersedes:
        report[0].ContentSequence.append(_supersedes_comment(provenance.supersedes))
    sr = _comprehensive_3d_sr(
        evidence=list(evidence),
        root=report[0],
        series_instance_uid=provenance.series_uid(images, kind),
        series_number=kind.series_number,
        sop_instance_uid=provenance.instance_uid(images, kind),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=False,
        is_final=False,
        is_verified=False,
        specific_character_set=UTF8,
    )
    provenance.stamp(sr, kind, images[0])
    predecessors = [ref for ref in provenance.supersedes if ref.sop_class_uid == sr.SOPClassUID]
    if predecessors:
        sr.PredecessorDocumentsSequence = predecessor_documents(predecessors)
    return sr


def _comprehensive_3d_sr(
    *, evidence: list[Dataset], root: Dataset, **identity: object
) -> hd.sr.Comprehensive3DSR:
    """``hd.sr.Comprehensive3DSR(evidence=evidence, content=root, **identity)``, the same
    dataset element for element, without highdicom's copies of the content tree.

    The constructor deep-copies ``content`` to keep a typed copy (``.content``), walks the copy
    to type every item again, and walks the content once more to find the images it references
    (which must all be in ``evidence``); the dataset then gets the original's elements. For a
    TID 1500 report on 200 images that is 3-7 s of CPU, most of an SR's cost. Here the
    constructor gets the root without its children (the evidence sequences depend only on
    ``evidence``), the document then gets the root's own Content Sequence element, the very
    element the constructor would have copied in, and ``.content`` the typed root as it is.
    The evidence check is done here in one walk. Upstream, a ``copy=False`` for the
    constructor's content (as ``from_dataset`` has) would make this unnecessary.
    """
    stub = Dataset()
    for element in root:
        if element.tag != _CONTENT_SEQUENCE:
            stub.add(element)
    stub.ContentSequence = []
    sr = hd.sr.Comprehensive3DSR(evidence=evidence, content=stub, **identity)  # type: ignore[arg-type]
    sr[_CONTENT_SEQUENCE] = root[_CONTENT_SEQUENCE]
    # what .content returns: the typed root (a MeasurementReport's items are typed)
    sr._content = hd.sr.ContentSequence([cast(hd.sr.ContentItem, root)], is_root=True)
    unknown = _referenced_uids(root) - {str(ds.SOPInstanceUID) for ds in evidence}
    if unknown:
        raise ValueError(f"the SR references {len(unknown)} instance(s) not in its evidence")
    return sr


_CONTENT_SEQUENCE = 0x0040A730


def _referenced_uids(root: Dataset) -> set[str]:
    """The SOP instances IMAGE and COMPOSITE content items reference (PS3.3 C.17.3.2.4)."""
    found = set()
    for item in root.get("ContentSequence", []):
        if item.get("ValueType") in ("IMAGE", "COMPOSITE"):
            found.add(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        found |= _referenced_uids(item)
    return found


def preload_standard_tables() -> None:
    """Read highdicom's tables of the standard now rather than in the first result built.

    highdicom loads its IOD and module tables (PS3.3, several MB of JSON) on first use, once per
    process: 0.3-0.8 s of CPU inside the first SR or presentation state of each job-runner
    process, i.e. inside a study's time. A process that builds results calls this at start-up.
    The loaders are private to highdicom, so a version without them only loses the head start.
    """
    try:
        from highdicom import _standard_utils as tables
    except ImportError:  # pragma: no cover - a highdicom that moved them
        return
    for loader in ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map"):
        getattr(tables, loader, lambda: None)()


def predecessor_documents(refs: Sequence[ResultRef]) -> list[Dataset]:
    """Predecessor Documents Sequence items (Hierarchical SOP Instance Reference, C.17.2.3)."""
    studies: dict[str, dict[str, list[ResultRef]]] = {}
    for ref in refs:
        studies.setdefault(ref.study_uid, {}).setdefault(ref.series_uid, []).append(ref)
    items = []
    for study_uid, series in sorted(studies.items()):
        study = Dataset()
        study.StudyInstanceUID = study_uid
        study.ReferencedSeriesSequence = []
        for series_uid, members in sorted(series.items()):
            item = Dataset()
            item.SeriesInstanceUID = series_uid
            item.ReferencedSOPSequence = []
            for ref in sorted(members, key=lambda r: r.sop_instance_uid):
                sop = Dataset()
                sop.ReferencedSOPClassUID = ref.sop_class_uid
                sop.ReferencedSOPInstanceUID = ref.sop_instance_uid
                item.ReferencedSOPSequence.append(sop)
            study.ReferencedSeriesSequence.append(item)
        items.append(study)
    return items


def _supersedes_comment(refs: Sequence[ResultRef]) -> hd.sr.TextContentItem:
    """A root comment (TID 1500 row 14 style TEXT) naming the superseded results' UIDs."""
    uids = ", ".join(sorted(ref.sop_instance_uid for ref in refs))
    return hd.sr.TextContentItem(
        name=COMMENT,
        value=f"Supersedes earlier AI results: {uids}",
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


def _source_for_segmentation(image: Dataset) -> hd.sr.SourceImageForSegmentation:
    """A TID 1411 row 11 reference to a segmented image, with the concept's standard meaning."""
    item = hd.sr.SourceImageForSegmentation(
        image.SOPClassUID, image.SOPInstanceUID, frame_numbers(image)
    )
    item.ConceptNameCodeSequence[0].CodeMeaning = SOURCE_IMAGE_FOR_SEGMENTATION.meaning
    return item


def _segment_group(
    seg: Dataset, number: int, prompt: Prompt, sources: Sequence[Dataset], provenance: Provenance
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    # Built by hand: ReferencedSegment.from_segmentation fails on single-segment SEGs in
    # highdicom 0.28.2 (it looks for the segment identification in the per-frame groups only).
    referenced = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=number,
        source_images=[_source_for_segmentation(ds) for ds in sources],
    )
    prop = segment_property(prompt.category, prompt.text)
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=segment_tracking_uid(provenance, seg.StudyInstanceUID, number, prompt),
            identifier=clip_text(prompt.text),
        ),
        referenced_segment=referenced,
        finding_type=prop.type,
        finding_category=prop.category,
        algorithm_id=sr_algorithm(provenance),
    )


def not_found_text(prompt: Prompt, provenance: Provenance) -> str:
    """The root-level text recording that ``prompt`` found nothing, naming the model."""
    return f"{prompt.text}: not detected by the algorithm ({provenance.model_name})"


def not_found_evaluations(
    prompts: Sequence[Prompt], provenance: Provenance
) -> tuple[list[tuple[Code, Code]], list[tuple[Code, str]]]:
    """Root-level items (TID 1500 rows 13 and 14) for prompts that found nothing.

    Each prompt gives a CODE item, its target's Segmented Property Type valued "Not detected",
    and a TEXT "Finding" with the prompt's own words and the model's name (the document's device
    observer context, TID 1004, identifies the model and its version as well).
    """
    codes_ = [(segment_property(p.category, p.text).type, NOT_DETECTED) for p in prompts]
    texts = [(FINDING, not_found_text(p, provenance)) for p in prompts]
    return codes_, texts


def build_seg_sr(
    sources: Sequence[Dataset], outcome: SegOutcome, provenance: Provenance
) -> Dataset:
    """The TID 1500 SR for a MedImageParse run: segments referenced, misses not detected."""
    groups: list[Group] = []
    if outcome.seg is not None:
        groups += [
            _segment_group(outcome.seg, number, prompt, sources, provenance)
            for number, prompt in enumerate(outcome.segments, start=1)
        ]
    root_codes, root_texts = not_found_evaluations(outcome.not_found, provenance)
    if not groups and not root_codes:
        raise ValueError("a segmentation report needs at least one prompt")
    report = measurement_report(
        groups, provenance, sources, root_texts=root_texts, root_codes=root_codes
    )
    evidence = [*sources, *([outcome.seg] if outcome.seg is not None else [])]
    return sr_document(evidence, report, provenance, ResultKind.SEG_SR)
