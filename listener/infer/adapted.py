"""Run an adapter task: classify a study with a trained adapter on its MedImageInsight embedding.

The representative image (as for zero-shot, :func:`listener.infer.tasks.run_classification`) is
classified from its stored embedding when the gateway holds one of the adapter's model version;
otherwise MedImageInsight is called first, and the new embedding is kept like any other. The
result is the zero-shot classification SR, with the adapter as the algorithm (TID 4019: name
``MedImageInsight adapter NAME``, version ``vN on MedImageInsight <model version>``), and its
top label routes the study as a zero-shot label does.
"""

from __future__ import annotations

import numpy as np

from converters.frames import number_of_frames
from converters.grounding import ImageFrame
from converters.model_outputs import ModelIdentity
from converters.prepare import ImageModel, prepare_image
from converters.results import build_adapter_results
from listener.errors import ConversionError
from listener.infer.adapters import AdapterRegistry
from listener.infer.tasks import TaskContext, TaskOutcome, _images, _provenance, _representative
from listener.route.plan import PlannedTask


async def run_adapter(task: PlannedTask, ctx: TaskContext) -> TaskOutcome:
    """Classify the study with the adapter named in ``task.parameters["adapter"]``."""
    name = str(task.parameters["adapter"])
    if ctx.adapters_dir is None:
        raise ConversionError(f"task {task.name}: no adapters folder configured")
    try:
        adapter = AdapterRegistry(ctx.adapters_dir).load(name)
    except KeyError:
        raise ConversionError(f"task {task.name}: no adapter named {name!r}") from None
    images = _images(task, ctx)
    if not images:
        raise ConversionError(f"task {task.name}: no image among the inputs")
    image, frame = _representative(images)
    uid = str(image.SOPInstanceUID)
    stored = ctx.stored_embedding(uid, adapter.model_version) if ctx.stored_embedding else None
    client = ctx.clients.medimageinsight
    fresh: dict[str, list[float]] = {}
    if stored is not None:
        vector, version = np.asarray(stored, dtype=np.float64), adapter.model_version
    else:
        if ctx.report is not None:
            ctx.report.images_sent = 1
        prepared = prepare_image(image, ImageModel.MEDIMAGEINSIGHT, frame=frame)
        answer = (await client.embed_images([prepared.png]))[0].image
        if answer is None:
            raise ConversionError(f"task {task.name}: the model returned no embedding")
        vector, version = np.asarray(answer, dtype=np.float64).ravel(), client.identity.version
        fresh = {uid: [float(v) for v in vector]}
    probabilities = adapter.probabilities(vector, version)  # refuses another model version
    identity = ModelIdentity(
        adapter.algorithm_name, adapter.algorithm_version, client.identity.emulated
    )
    frame_ref = ImageFrame(image, frame + 1 if number_of_frames(image) > 1 else None)
    provenance = _provenance(identity, task, ctx, [image])
    results = build_adapter_results(
        [image], frame_ref, adapter.labels, [float(p) for p in probabilities], provenance
    )
    return TaskOutcome(
        results.objects,
        adapter.labels[int(np.argmax(probabilities))],
        fresh,
        model_version=version,
        probabilities=dict(zip(adapter.labels, map(float, probabilities), strict=True)),
    )
