"""MedImageInsight zero-shot classification: probabilities, and a TID 1500 SR that holds them.

MedImageInsight returns unit-norm image and text embeddings and a log-temperature
``scaling_factor``; the zero-shot probabilities of the label prompts are
``softmax(exp(scaling_factor) * text . image)`` (docs/models.md §1.2 and §5.4). The SR carries
one image-level measurement group (TID 1501) per label: the label as a private-coded finding,
the probability as a numeric measurement (DCM 122157 "Probability", UCUM "1"), and the
highest-probability label flagged by a qualitative evaluation. Embeddings stay internal.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from converters.codes import NO, NO_UNITS, PROBABILITY, TOP_LABEL, YES, clip_text
from converters.codes import private_label_code as label_code
from converters.grounding import ImageFrame
from converters.provenance import Provenance, ResultKind, study_uid_of
from converters.sr import Group, add_texts, measurement_report, sr_algorithm, sr_document

# Used when an endpoint leaves scaling_factor out (older model versions, docs/models.md §1.2).
DEFAULT_SCALING_FACTOR = 4.513362


def zero_shot_probabilities(
    image: npt.ArrayLike, texts: npt.ArrayLike, scaling_factor: float | None
) -> npt.NDArray[np.float64]:
    """``softmax(exp(scaling_factor) * texts @ image)``: one probability per text row.

    ``image`` is one embedding (squeezed), ``texts`` one row per label. The softmax subtracts
    the largest logit first, so large scaling factors do not overflow.
    """
    vector = np.asarray(image, dtype=np.float64).reshape(-1)
    matrix = np.atleast_2d(np.asarray(texts, dtype=np.float64))
    if matrix.shape[1] != vector.shape[0]:
        raise ValueError(f"text embeddings {matrix.shape} do not match image {vector.shape}")
    scale = DEFAULT_SCALING_FACTOR if scaling_factor is None else scaling_factor
    logits = np.exp(scale) * (matrix @ vector)
    weights = np.exp(logits - logits.max())
    probabilities: npt.NDArray[np.float64] = weights / weights.sum()
    return probabilities


def _label_group(
    label: str,
    probability: float,
    top: bool,
    image: ImageFrame,
    provenance: Provenance,
    study_uid: str,
) -> Group:
    code = label_code(label)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=provenance.tracking_uid(study_uid, ResultKind.CLASSIFICATION_SR, label),
            identifier=clip_text(label),
        ),
        finding_type=code,
        algorithm_id=sr_algorithm(provenance),
        measurements=[hd.sr.Measurement(name=PROBABILITY, value=probability, unit=NO_UNITS)],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=TOP_LABEL, value=YES if top else NO)
        ],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=image.image.SOPClassUID,
                referenced_sop_instance_uid=image.image.SOPInstanceUID,
                referenced_frame_numbers=image.frame_numbers,
            )
        ],
    )
    if len(code.meaning) < len(label):
        add_texts(group, [label])  # the full prompt, when the code meaning had to be cut
    return group


def build_classification_sr(
    sources: Sequence[Dataset],
    image: ImageFrame,
    labels: Sequence[str],
    probabilities: Sequence[float],
    provenance: Provenance,
) -> Dataset:
    """The classification SR: a group per label with its probability, the top one flagged."""
    if not labels or len(labels) != len(probabilities):
        raise ValueError("need one probability per label, and at least one label")
    if len(set(labels)) != len(labels):
        raise ValueError("labels must be distinct")
    study_uid = study_uid_of(sources)
    top = int(np.argmax(probabilities))
    groups = [
        _label_group(label, float(p), i == top, image, provenance, study_uid)
        for i, (label, p) in enumerate(zip(labels, probabilities, strict=True))
    ]
    report = measurement_report(groups, provenance, sources)
    return sr_document(sources, report, provenance, ResultKind.CLASSIFICATION_SR)
