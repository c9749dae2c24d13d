"""One call per model answer: build the result objects and pass each through the gate.

The pipeline calls these and sends what they return; every object returned has passed
:func:`converters.check.check_result`, and a failure raises
:class:`~converters.check.ResultCheckError`. Sources are first cleaned of malformed patient and
study values (:mod:`converters.copied`), which highdicom would otherwise refuse or copy.

When the provenance says which earlier results these supersede (a follow-up generation of the
study), the objects end with the rejection note that withdraws them (:mod:`converters.kos`,
IHE IOCM), checked like the rest and sent to the same destinations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from converters.check import check_result
from converters.copied import cleaned_source
from converters.cxr import build_report_sr, split_disclaimers
from converters.grounding import ImageFrame, PixelFinding
from converters.insight import build_classification_sr, zero_shot_probabilities
from converters.kos import build_rejection_note
from converters.model_outputs import Embeddings
from converters.pr import build_findings_pr
from converters.provenance import Provenance
from converters.seg import Prompt, SourceMasks, build_seg
from converters.sr import build_seg_sr


@dataclass(frozen=True)
class ParseResults:
    """Checked objects (the SEG when any prompt found something, then the SR) and the misses."""

    objects: tuple[Dataset, ...]
    not_found: tuple[Prompt, ...]
    seg_built: bool


@dataclass(frozen=True)
class ClassificationResults:
    """The checked classification SR and the probabilities it records, one per label."""

    objects: tuple[Dataset, ...]
    probabilities: npt.NDArray[np.float64]


def build_parse_results(
    sources: Sequence[Dataset], masks: SourceMasks, provenance: Provenance
) -> ParseResults:
    """MedImageParse: SEG of the found prompts (if any) and the SR linking it and the misses."""
    sources = [cleaned_source(ds) for ds in sources]
    outcome = build_seg(sources, masks, provenance)
    objects: list[Dataset] = []
    if outcome.seg is not None:
        objects.append(check_result(outcome.seg, sources))
    sr = build_seg_sr(sources, outcome, provenance)
    objects.append(check_result(sr, sources, companions=[*objects, *_earlier(provenance)]))
    objects += _rejection_note(sources, provenance)
    return ParseResults(tuple(objects), outcome.not_found, outcome.seg is not None)


def build_report_results(
    sources: Sequence[Dataset],
    frontal: ImageFrame,
    findings: Sequence[PixelFinding],
    provenance: Provenance,
) -> list[Dataset]:
    """CXRReportGen: the draft report SR, and a presentation state when findings have boxes."""
    sources = [cleaned_source(ds) for ds in sources]
    frontal = ImageFrame(_same(sources, frontal.image), frontal.frame)
    earlier = _earlier(provenance)
    sr = build_report_sr(sources, frontal, findings, provenance)
    objects = [check_result(sr, sources, companions=earlier)]
    pr = build_findings_pr(sources, frontal, split_disclaimers(findings)[0], provenance)
    if pr is not None:
        objects.append(check_result(pr, sources))
    return objects + _rejection_note(sources, provenance)


def _same(sources: Sequence[Dataset], image: Dataset) -> Dataset:
    """The (cleaned) source that is ``image``, or ``image`` cleaned when it is not a source."""
    uid = str(image.SOPInstanceUID)
    return next((ds for ds in sources if str(ds.SOPInstanceUID) == uid), cleaned_source(image))


def _earlier(provenance: Provenance) -> list[Dataset]:
    """The superseded results as stand-ins the gate accepts as referenced (Predecessors)."""
    stand_ins = []
    for ref in provenance.supersedes:
        item = Dataset()
        item.SOPInstanceUID = ref.sop_instance_uid
        stand_ins.append(item)
    return stand_ins


def _rejection_note(sources: Sequence[Dataset], provenance: Provenance) -> list[Dataset]:
    """The checked KOS withdrawing ``provenance.supersedes``; none when nothing is superseded."""
    if not provenance.supersedes:
        return []
    note = build_rejection_note(sources, provenance.supersedes, provenance)
    return [check_result(note, sources, companions=_earlier(provenance))]


def build_adapter_results(
    sources: Sequence[Dataset],
    image: ImageFrame,
    labels: Sequence[str],
    probabilities: Sequence[float],
    provenance: Provenance,
) -> ClassificationResults:
    """An adapter's classification: the same SR as zero-shot, from probabilities the adapter
    computed (``provenance`` names the adapter on top of MedImageInsight, TID 4019)."""
    sources = [cleaned_source(ds) for ds in sources]
    image = ImageFrame(_same(sources, image.image), image.frame)
    sr = build_classification_sr(sources, image, labels, list(probabilities), provenance)
    checked = check_result(sr, sources, companions=_earlier(provenance))
    return ClassificationResults(
        (checked, *_rejection_note(sources, provenance)), np.asarray(probabilities, np.float64)
    )


def build_classification_results(
    sources: Sequence[Dataset],
    image: ImageFrame,
    labels: Sequence[str],
    embeddings: Embeddings,
    provenance: Provenance,
) -> ClassificationResults:
    """MedImageInsight zero-shot: probabilities of ``labels`` and the SR that records them."""
    if embeddings.image is None or embeddings.text is None:
        raise ValueError("zero-shot classification needs image and text embeddings")
    sources = [cleaned_source(ds) for ds in sources]
    image = ImageFrame(_same(sources, image.image), image.frame)
    probabilities = zero_shot_probabilities(
        embeddings.image, embeddings.text, embeddings.scaling_factor
    )
    sr = build_classification_sr(sources, image, labels, list(probabilities), provenance)
    checked = check_result(sr, sources, companions=_earlier(provenance))
    return ClassificationResults((checked, *_rejection_note(sources, provenance)), probabilities)
