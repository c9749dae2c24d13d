"""Run one planned model task: prepare the images, call the model, build the result objects.

This is the infer + convert step of the pipeline for one job. It takes its inputs through a
:class:`TaskContext` (clients, a loader of source datasets by SOP Instance UID, the provenance
clock), so the same code serves ``pacs-ai serve`` (datasets from the spool) and
``pacs-ai process`` (datasets from local files). Everything it returns has passed the converters'
result gate; a model or conversion failure raises the matching :mod:`listener.errors` class.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from converters.copied import redact
from converters.cxr import NO_PRIOR_STATEMENT
from converters.frames import number_of_frames
from converters.geometry import cxr_box_to_source, mask_to_source
from converters.grounding import ImageFrame, PixelFinding
from converters.model_outputs import PARSE_CATEGORIES, Embeddings, ModelIdentity, ParseResult
from converters.prepare import ImageModel, PreparedImage, prepare_image
from converters.provenance import Provenance, ResultKind, ResultRef
from converters.results import (
    build_classification_results,
    build_parse_results,
    build_report_results,
)
from converters.seg import Prompt, SourceMasks
from converters.volume import FrameRef, VolumeError, build_volume, frame_masks
from listener import __version__
from listener.errors import ConversionError, GatewayError
from listener.infer import ModelClients
from listener.infer.clients import gather_all
from listener.infer.egress import EgressReport, admit_images, outgoing_text, withheld_because
from listener.route.plan import DEFAULT_ROLE, PlannedTask
from listener.security.settings import EgressPolicy

# Told after every task's model calls what left (or was withheld), whether the task succeeded,
# and why not: the audit trail's model-call records.
EgressObserver = Callable[[EgressReport, bool, str | None], None]

# Attributes read, in order, for CXRReportGen's text inputs; the task parameters
# ``indication_from`` / ``technique_from`` (comma-separated keywords) override them.
INDICATION_ATTRIBUTES = ("ReasonForTheRequestedProcedure", "ReasonForStudy", "StudyComments")
TECHNIQUE_ATTRIBUTES = ("PerformedProcedureStepDescription", "StudyDescription")
FRONTAL_ROLE, LATERAL_ROLE = "frontal", "lateral"


@dataclass(frozen=True)
class PriorImage:
    """The prior frontal image of the same patient and, when the gateway holds one, its report."""

    dataset: Dataset
    study_date: str
    report: str | None = None


@dataclass
class TaskContext:
    """What a task needs from outside: model clients, source data and the clock."""

    clients: ModelClients
    load: Callable[[str], Dataset]
    # Local time with its offset: results carry Timezone Offset From UTC (converters.provenance).
    clock: Callable[[], datetime] = field(
        default_factory=lambda: lambda: datetime.now().astimezone()
    )
    uid_root: str | None = None
    # The prior of a frontal image, from the source a task names (None: the configured one).
    prior: Callable[[Dataset, str | None], PriorImage | None] | None = None
    # The results of the task's previous generation on this study (IHE IOCM supersession).
    earlier: Callable[[PlannedTask], Sequence[ResultRef]] | None = None
    # The egress policy per model (models.<name>.egress); a model not listed gets the default.
    egress: Mapping[str, EgressPolicy] = field(default_factory=dict)
    on_egress: EgressObserver | None = None
    report: EgressReport | None = None  # of the task being run (set by run_task)
    # Adapter tasks (listener.infer.adapted): the saved adapters, and a stored embedding of an
    # instance for a model version (None: not stored).
    adapters_dir: Path | None = None
    stored_embedding: Callable[[str, str], npt.NDArray[np.float32] | None] | None = None

    def policy(self, model: str) -> EgressPolicy:
        return self.egress.get(model) or EgressPolicy()


@dataclass(frozen=True)
class TaskOutcome:
    """The checked result objects, and what the pipeline acts on besides sending them."""

    objects: tuple[Dataset, ...]
    top_label: str | None = None
    embeddings: dict[str, list[float]] = field(default_factory=dict)
    not_found: tuple[str, ...] = ()
    model_version: str = ""
    emulated: bool = False  # the answers came from the emulator, not a clinical model
    probabilities: dict[str, float] = field(default_factory=dict)  # per label (classification)


def _provenance(
    identity: ModelIdentity, task: PlannedTask, ctx: TaskContext, sources: Sequence[Dataset]
) -> Provenance:
    """Who makes these results, and which earlier results of the task they supersede.

    The earlier generation's results (``ctx.earlier``) are superseded unless they are these
    very results: a result series UID derives from the task, the model and the exact sources
    (:mod:`converters.provenance`), so an earlier result in one of the series these results
    will have came from the same inputs and is being made again, not replaced.
    """
    provenance = Provenance(
        model=identity,
        rule=task.rule,
        task=task.name,
        gateway_version=__version__,
        created=ctx.clock(),
        uid_root=ctx.uid_root,
    )
    earlier = ctx.earlier(task) if ctx.earlier is not None else ()
    if not earlier or not sources:
        return provenance
    own = {provenance.series_uid(sources, kind) for kind in ResultKind}
    superseded = tuple(ref for ref in earlier if ref.series_uid not in own)
    return dataclasses.replace(provenance, supersedes=superseded)


# The Image Pixel Module's Type 1 attributes (PS3.3 C.7.6.3): without them there is no image to
# prepare, and no retry changes that.
PIXEL_MODULE = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
)


def _images(task: PlannedTask, ctx: TaskContext, role: str | None = None) -> list[Dataset]:
    """The task's input images (of ``role``, or all), each read once; instances without pixel
    data are left out, and an image that lacks a pixel-module attribute fails the task."""
    roles = [role] if role else list(task.inputs)
    uids = [uid for name in roles for uid in task.inputs.get(name, ())]
    loaded = [ds for ds in map(ctx.load, dict.fromkeys(uids)) if "PixelData" in ds]
    report = ctx.report if ctx.report is not None else EgressReport(task.model)
    if loaded and not report.study_uid:
        report.study_uid = str(loaded[0].get("StudyInstanceUID", ""))
        report.patient_id = str(loaded[0].get("PatientID", "")) or None
    datasets = admit_images(loaded, ctx.policy(task.model), report)
    if loaded and not datasets:
        reasons = sorted(set(report.withheld.values()))
        raise ConversionError(
            f"task {task.name}: no image may leave under models.{task.model}.egress"
            f" ({'; '.join(reasons)}; allow_burned_in is false)"
        )
    for ds in datasets:
        missing = [name for name in PIXEL_MODULE if ds.get(name) in (None, "")]
        if missing:
            raise ConversionError(
                f"task {task.name}: instance {ds.get('SOPInstanceUID', '?')} lacks pixel-module"
                f" attributes {', '.join(missing)} (PS3.3 C.7.6.3)"
            )
    return datasets


def main_series(datasets: Sequence[Dataset]) -> list[Dataset]:
    """The largest series among ``datasets`` whose images share one size, in slice order.

    A SEG describes one series on one pixel grid (PS3.3 C.8.20), so a study with several series is
    segmented on its main one (the most images).
    """
    if not datasets:
        return []
    series = Counter(str(ds.SeriesInstanceUID) for ds in datasets).most_common(1)[0][0]
    members = [ds for ds in datasets if str(ds.SeriesInstanceUID) == series]
    size = Counter((int(ds.Rows), int(ds.Columns)) for ds in members).most_common(1)[0][0]
    members = [ds for ds in members if (int(ds.Rows), int(ds.Columns)) == size]
    return sorted(members, key=_slice_order)


def _slice_order(ds: Dataset) -> tuple[float, int]:
    position = ds.get("ImagePositionPatient")
    orientation = ds.get("ImageOrientationPatient")
    if position is not None and orientation is not None and len(orientation) == 6:
        normal = np.cross(np.array(orientation[:3], float), np.array(orientation[3:], float))
        return (-float(np.dot(normal, np.array(position, float))), int(ds.get("InstanceNumber", 0)))
    return (0.0, int(ds.get("InstanceNumber") or 0))


def _first_present(ds: Dataset, names: Sequence[str]) -> str:
    for name in names:
        value = ds.get(name)
        if value not in (None, ""):
            return str(value)
    return ""


def _attribute_list(task: PlannedTask, key: str, default: Sequence[str]) -> list[str]:
    value = task.parameters.get(key)
    return [part.strip() for part in str(value).split(",")] if value else list(default)


async def run_cxr(task: PlannedTask, ctx: TaskContext) -> TaskOutcome:
    """CXRReportGen on the frontal (and lateral, prior) image: report SR and findings GSPS."""
    frontal_images = _images(task, ctx, FRONTAL_ROLE) or _images(task, ctx)
    if not frontal_images:
        raise ConversionError(f"task {task.name}: no frontal chest image among the inputs")
    frontal = frontal_images[0]
    lateral = next(iter(_images(task, ctx, LATERAL_ROLE)), None)
    prior = None
    if ctx.prior is not None:  # may ask the PACS: off the event loop, bounded by its timeout
        source = task.parameters.get("priors_source")
        prior = await asyncio.to_thread(ctx.prior, frontal, str(source) if source else None)
    policy = ctx.policy(task.model)
    egress = ctx.report if ctx.report is not None else EgressReport(task.model)
    if prior is not None and withheld_because(prior.dataset, policy) is not None:
        egress.withheld[str(prior.dataset.get("SOPInstanceUID", "?"))] = str(
            withheld_because(prior.dataset, policy)
        )
        prior = None
    text = outgoing_text(
        {
            "indication": _first_present(
                frontal, _attribute_list(task, "indication_from", INDICATION_ATTRIBUTES)
            ),
            "technique": _first_present(
                frontal, _attribute_list(task, "technique_from", TECHNIQUE_ATTRIBUTES)
            ),
            "comparison": f"Prior study of {prior.study_date}" if prior else "None",
        },
        frontal,
        policy,
        egress,
    )
    egress.images_sent = 1 + (lateral is not None) + (prior is not None)
    client = ctx.clients.cxrreportgen
    # CPU-heavy preparation and result building run in a worker thread: the job process's
    # event loop keeps its other jobs' model calls and the lease heartbeats going.
    pngs = await asyncio.to_thread(
        lambda: [
            prepare_image(ds, ImageModel.CXRREPORTGEN).png if ds is not None else None
            for ds in (frontal, lateral, prior.dataset if prior else None)
        ]
    )
    frontal_png = pngs[0]
    assert frontal_png is not None
    report = await client.generate(
        frontal_png,
        lateral=pngs[1],
        prior=pngs[2],
        indication=text["indication"],
        technique=text["technique"],
        comparison=text["comparison"] or "None",
        prior_report=prior.report if prior else None,
    )
    rows, cols = int(frontal.Rows), int(frontal.Columns)
    findings = [
        PixelFinding(f.text, tuple(cxr_box_to_source(box, rows, cols) for box in f.boxes))
        for f in report.findings
    ]
    if prior is None:
        findings.append(PixelFinding(NO_PRIOR_STATEMENT))
    sources = [frontal, *([lateral] if lateral is not None else [])]
    provenance = _provenance(client.identity, task, ctx, sources)
    objects = await asyncio.to_thread(
        build_report_results, sources, ImageFrame(frontal), findings, provenance
    )
    return TaskOutcome(tuple(objects))


def _representative(datasets: Sequence[Dataset]) -> tuple[Dataset, int]:
    """The image (and frame) a study is classified on: the middle of its main series."""
    series = main_series(datasets)
    if len(series) == 1:
        return series[0], number_of_frames(series[0]) // 2
    return series[len(series) // 2], 0


async def run_classification(task: PlannedTask, ctx: TaskContext) -> TaskOutcome:
    """MedImageInsight zero-shot classification of the study on its labels; SR with the
    probabilities; the top label picks the routing destination."""
    if task.parameters.get("adapter"):
        from listener.infer.adapted import run_adapter  # it builds on this module's helpers

        return await run_adapter(task, ctx)
    if not task.labels:
        raise ConversionError(f"task {task.name}: a classification needs labels")
    images = _images(task, ctx)
    if not images:
        raise ConversionError(f"task {task.name}: no image among the inputs")
    image, frame = _representative(images)
    if ctx.report is not None:
        ctx.report.images_sent = 1
    client = ctx.clients.medimageinsight
    prepared = await asyncio.to_thread(
        prepare_image, image, ImageModel.MEDIMAGEINSIGHT, frame=frame
    )
    texts = list(task.label_texts or task.labels)
    image_answer = await client.embed_images([prepared.png])
    text_answers = await client.embed_texts(texts)  # usually kept from an earlier study
    scale = image_answer[0].scaling_factor
    if scale is not None and text_answers[0].scaling_factor not in (None, scale):
        client.forget_texts()  # kept from another model behind the same endpoint
        text_answers = await client.embed_texts(texts)
    image_vector = image_answer[0].image
    vectors = [answer.text for answer in text_answers]
    if image_vector is None or any(vector is None for vector in vectors):
        raise ConversionError(f"task {task.name}: the model returned no embedding")
    embeddings = Embeddings(
        image=image_vector,
        text=np.stack([v for v in vectors if v is not None]),
        scaling_factor=image_answer[0].scaling_factor or text_answers[0].scaling_factor,
    )
    frame_ref = ImageFrame(image, frame + 1 if number_of_frames(image) > 1 else None)
    provenance = _provenance(client.identity, task, ctx, [image])
    results = await asyncio.to_thread(
        build_classification_results, [image], frame_ref, task.labels, embeddings, provenance
    )
    top = task.labels[int(np.argmax(results.probabilities))]
    vector = [float(v) for v in np.asarray(image_vector, dtype=np.float64).ravel()]
    return TaskOutcome(
        results.objects,
        top,
        {str(image.SOPInstanceUID): vector},
        model_version=client.identity.version,
        probabilities=dict(zip(task.labels, map(float, results.probabilities), strict=True)),
    )


# Frames of one task prepared and in flight at once: bounds memory (a 1024x1024 PNG and a
# prompts x 1024 x 1024 answer per frame) however long the series. A request carries up to
# ``models.medimageparse.batch_size`` frames, and the job sends as many requests at once as its
# frames in flight make up; the model's ``concurrency`` across the whole gateway is kept by the
# transport's permits (listener.infer.permits).
FRAMES_IN_FLIGHT = 16


def _prepare_frames(
    frames: Sequence[tuple[Dataset, int]], window: str | None
) -> list[PreparedImage]:
    return [prepare_image(ds, ImageModel.MEDIMAGEPARSE, frame=i, preset=window) for ds, i in frames]


def _masks_on_source(
    answers: Sequence[ParseResult], prepared: Sequence[PreparedImage]
) -> list[npt.NDArray[np.bool_]]:
    return [
        np.stack([mask_to_source(mask, image.transform) for mask in answer.masks])
        for answer, image in zip(answers, prepared, strict=True)
    ]


async def _parse_batch(
    ctx: TaskContext,
    frames: Sequence[tuple[Dataset, int]],
    task: PlannedTask,
    slots: asyncio.Semaphore,
) -> list[tuple[tuple[str, ...], npt.NDArray[np.bool_]]]:
    """Frames through MedImageParse in one request: each frame's categories and masks on the
    source grid. Preparing the images and mapping the masks back run in a worker thread, so
    the event loop keeps the job's other requests (and its lease heartbeat) going meanwhile."""
    async with slots:
        prepared = await asyncio.to_thread(_prepare_frames, frames, task.window)
        client = ctx.clients.medimageparse
        answers = await client.segment_rows([p.png for p in prepared], task.prompts)
        masks = await asyncio.to_thread(_masks_on_source, answers, prepared)
    return [(answer.categories, mask) for answer, mask in zip(answers, masks, strict=True)]


async def run_parse(task: PlannedTask, ctx: TaskContext) -> TaskOutcome:
    """MedImageParse on every frame of the main series: SEG of what was found, SR linking it."""
    if not task.prompts:
        raise ConversionError(f"task {task.name}: segmentation needs prompts")
    sources = main_series(_images(task, ctx))
    if not sources:
        raise ConversionError(f"task {task.name}: no image among the inputs")
    frames = [(ds, i) for ds in sources for i in range(number_of_frames(ds))]
    if len(sources) > 1 and len(frames) != len(sources):
        raise ConversionError(f"task {task.name}: a series mixing multi-frame images")
    if ctx.report is not None:
        ctx.report.images_sent = len(frames)
    size = ctx.clients.medimageparse.batch_size
    slots = asyncio.Semaphore(max(1, FRAMES_IN_FLIGHT // size))
    batches = [frames[i : i + size] for i in range(0, len(frames), size)]
    answered = await gather_all(*(_parse_batch(ctx, b, task, slots) for b in batches))
    answers = [answer for batch in answered for answer in batch]
    categories = answers[0][0]
    prompts = tuple(Prompt(text, cat) for text, cat in zip(task.prompts, categories, strict=False))
    masks = np.stack([mask for _, mask in answers], axis=1)  # (prompts, frames, rows, cols)
    provenance = _provenance(ctx.clients.medimageparse.identity, task, ctx, sources)
    results = await asyncio.to_thread(
        build_parse_results, sources, SourceMasks(prompts, masks), provenance
    )
    return TaskOutcome(results.objects, not_found=tuple(p.text for p in results.not_found))


async def run_parse3d(task: PlannedTask, ctx: TaskContext) -> TaskOutcome:
    """MedImageParse 3D on the main series as one NIfTI volume: SEG and SR as for 2D."""
    if not task.prompts:
        raise ConversionError(f"task {task.name}: segmentation needs prompts")
    sources = main_series(_images(task, ctx))
    try:
        volume = build_volume(sources, preset=task.window)
    except VolumeError as exc:
        raise ConversionError(f"task {task.name}: {exc}") from exc
    if ctx.report is not None:
        ctx.report.images_sent = len(sources)
    client = ctx.clients.medimageparse3d
    answer = await client.segment(volume.nifti, task.prompts)
    refs = [
        FrameRef(str(ds.SOPInstanceUID), i) for ds in sources for i in range(number_of_frames(ds))
    ]
    per_prompt = []
    for label in range(1, len(task.prompts) + 1):
        by_frame = frame_masks(answer.labels, volume, label=label, labels_affine=answer.affine)
        per_prompt.append(np.stack([by_frame[ref] for ref in refs]))
    prompts = tuple(Prompt(text, _category3d(text)) for text in task.prompts)
    provenance = _provenance(client.identity, task, ctx, sources)
    results = build_parse_results(sources, SourceMasks(prompts, np.stack(per_prompt)), provenance)
    return TaskOutcome(results.objects, not_found=tuple(p.text for p in results.not_found))


def _category3d(prompt: str) -> str:
    """MedImageParse 3D answers no category; use the prompt when it names one, else "other"."""
    lowered = prompt.lower().strip()
    return next((c for c in PARSE_CATEGORIES if c.split()[0] == lowered), "other")


RUNNERS: dict[str, Callable[[PlannedTask, TaskContext], Any]] = {
    "cxrreportgen": run_cxr,
    "medimageinsight": run_classification,
    "medimageparse": run_parse,
    "medimageparse3d": run_parse3d,
}


async def run_task(task: PlannedTask, ctx: TaskContext) -> TaskOutcome:
    """Run ``task`` with the runner of its model; any failure that is not the gateway's own
    (result gate, image preparation, a library's TypeError on an unusual input) becomes a
    ConversionError naming the task and the reason, with the sources' values redacted, so one
    bad input fails its task alone. The model's egress policy is applied before any call, and
    ``ctx.on_egress`` is told what left (:mod:`listener.infer.egress`)."""
    ctx = replace(ctx, report=EgressReport(task.model))
    assert ctx.report is not None
    try:
        outcome: TaskOutcome = await RUNNERS[task.model](task, ctx)
        identity = getattr(ctx.clients, task.model).identity
        outcome = dataclasses.replace(outcome, emulated=identity.emulated)
    except GatewayError as exc:
        _tell_egress(ctx, ctx.report, str(exc))
        raise
    except Exception as exc:  # the task boundary: whatever the input did, the task fails alone
        reason = redact(f"{type(exc).__name__}: {exc}", _loaded_sources(task, ctx))
        _tell_egress(ctx, ctx.report, reason)
        raise ConversionError(f"task {task.name}: {reason}") from exc
    _tell_egress(ctx, ctx.report, None)
    return outcome


def _tell_egress(ctx: TaskContext, report: EgressReport, failure: str | None) -> None:
    if ctx.on_egress is not None:
        ctx.on_egress(report, failure is None, failure)


def _loaded_sources(task: PlannedTask, ctx: TaskContext) -> list[Dataset]:
    sources = []
    for uid in dict.fromkeys(uid for uids in task.inputs.values() for uid in uids):
        try:
            sources.append(ctx.load(uid))
        except Exception:
            continue
    return sources


__all__ = [
    "DEFAULT_ROLE",
    "PriorImage",
    "TaskContext",
    "TaskOutcome",
    "main_series",
    "run_task",
]
