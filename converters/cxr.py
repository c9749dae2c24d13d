"""CXRReportGen's draft report as a TID 1500 Comprehensive 3D SR.

One measurement group per finding: a finding with boxes gets one planar ROI group per box
(TID 1410) whose region is a closed rectangular POLYLINE SCOORD on the frontal image (PS3.3
C.18.6.1.1: five points, the last equal to the first); a finding without boxes gets an image-level
group (TID 1501) that references the frontal image. Each group holds the sentence as text, the
algorithm identification, and a tracking identifier and UID that stay the same on a re-run. The
whole draft report goes once more, as one text, in the root's qualitative evaluations. The
procedure reported is the generic "Imaging procedure": TID 1500 row 4 takes its value from
CID 100, which has no chest radiography concept.

When some findings have boxes, the findings without boxes are root-level "Finding" texts (TID
1500 rows 12 and 14) rather than image-level groups beside the planar ones: PixelMed's validator
(the IHE AIR connectathon tool) checks every group of an Imaging Measurements container that
holds a TID 1410 group against TID 1410, and an image-level group fails its region rows (5 and
7, "Missing conditional content item"), whatever the mix of boxed and unboxed findings.

A sentence that only says where the draft came from (the emulator's "This draft was produced by
a model emulator, not a clinical model.") is not a finding: :func:`split_disclaimers` takes it
out of the findings, the draft text and the presentation state, and the SR keeps it as a root
comment (DCM 121106).
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.coding import Code

from converters.codes import COMMENT, DRAFT_REPORT, FINDING
from converters.grounding import ImageFrame, PixelFinding, clip_box, closed_rectangle
from converters.provenance import Provenance, ResultKind, study_uid_of
from converters.sr import Group, add_texts, measurement_report, sr_algorithm, sr_document

# Sentences that describe the draft's origin rather than the image.
EMULATOR_DISCLAIMER = "This draft was produced by a model emulator, not a clinical model."
# Said in the report SR (a root comment) when CXRReportGen had no prior study to compare with.
NO_PRIOR_STATEMENT = "No prior study was available for comparison."
DISCLAIMERS = frozenset({EMULATOR_DISCLAIMER, NO_PRIOR_STATEMENT})


def split_disclaimers(
    findings: Sequence[PixelFinding],
) -> tuple[list[PixelFinding], list[str]]:
    """The findings proper, and the disclaimer sentences (without boxes) found among them."""
    kept, disclaimers = [], []
    for finding in findings:
        if not finding.boxes and finding.text.strip() in DISCLAIMERS:
            disclaimers.append(finding.text.strip())
        else:
            kept.append(finding)
    return kept, disclaimers


def finding_tracking(
    provenance: Provenance, study_uid: str, index: int, box: int | None, text: str
) -> hd.sr.TrackingIdentifier:
    """Tracking identifier "finding N[.M]" and a UID from the finding's place and box."""
    label = f"finding {index + 1}" + ("" if box is None else f".{box + 1}")
    uid = provenance.tracking_uid(study_uid, ResultKind.REPORT_SR, f"{label}:{text}")
    return hd.sr.TrackingIdentifier(uid=uid, identifier=label)


def _region_groups(
    index: int, finding: PixelFinding, frontal: ImageFrame, provenance: Provenance, study_uid: str
) -> list[Group]:
    source = hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=frontal.image.SOPClassUID,
        referenced_sop_instance_uid=frontal.image.SOPInstanceUID,
        referenced_frame_numbers=frontal.frame_numbers,
    )
    groups: list[Group] = []
    for number, box in enumerate(finding.boxes):
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=closed_rectangle(clip_box(box, frontal.image)),
            source_image=source,
        )
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=finding_tracking(
                provenance, study_uid, index, number, finding.text
            ),
            referenced_region=region,
            algorithm_id=sr_algorithm(provenance),
        )
        add_texts(group, [finding.text])
        groups.append(group)
    return groups


def _image_group(
    index: int, finding: PixelFinding, frontal: ImageFrame, provenance: Provenance, study_uid: str
) -> Group:
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=finding_tracking(provenance, study_uid, index, None, finding.text),
        algorithm_id=sr_algorithm(provenance),
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=frontal.image.SOPClassUID,
                referenced_sop_instance_uid=frontal.image.SOPInstanceUID,
                referenced_frame_numbers=frontal.frame_numbers,
            )
        ],
    )
    add_texts(group, [finding.text])
    return group


def build_report_sr(
    sources: Sequence[Dataset],
    frontal: ImageFrame,
    findings: Sequence[PixelFinding],
    provenance: Provenance,
) -> Dataset:
    """The draft report SR: a group per finding (per box), the whole report as root text."""
    study_uid = study_uid_of(sources)
    findings, disclaimers = split_disclaimers(findings)
    if not findings:
        raise ValueError("a report SR needs at least one finding")
    groups: list[Group] = []
    boxed = any(finding.boxes for finding in findings)
    unboxed: list[tuple[Code, str]] = []
    for index, finding in enumerate(findings):
        if finding.boxes:
            groups += _region_groups(index, finding, frontal, provenance, study_uid)
        elif boxed:
            unboxed.append((FINDING, finding.text))
        else:
            groups.append(_image_group(index, finding, frontal, provenance, study_uid))
    text = " ".join(finding.text for finding in findings)
    root_texts = [(DRAFT_REPORT, text), *unboxed, *((COMMENT, line) for line in disclaimers)]
    report = measurement_report(groups, provenance, sources, root_texts=root_texts)
    return sr_document(sources, report, provenance, ResultKind.REPORT_SR)
