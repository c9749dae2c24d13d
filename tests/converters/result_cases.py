"""Shared inputs and checks for the result-object tests: the five source kinds, dciodvfy.

Sources: the real CR chest (pydicom-data RG1_UNCR, MONOCHROME1, no Frame of Reference), a
64-slice synthetic CT series, an Enhanced CT multi-frame (eCT_Supplemental, 2 frames), a small
MR (MR_small) and an RGB secondary capture.
"""

from __future__ import annotations

import re
import subprocess
from datetime import datetime
from pathlib import Path

import factory
import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom import Dataset
from pydicom.data import get_testdata_file

from converters.codes import QUALITATIVE_EVALUATIONS
from converters.geometry import PixelBox
from converters.grounding import ImageFrame, PixelFinding
from converters.model_outputs import ModelIdentity
from converters.provenance import Provenance
from converters.seg import frame_count

SOURCE_KINDS = ("cr_chest", "ct_series", "enhanced_ct", "mr_small", "rgb_capture")
CREATED = datetime(2026, 1, 2, 3, 4, 5)

# dciodvfy warnings that remain on our objects, and why they are acceptable:
ACCEPTED_WARNINGS = (
    # The sources' own Referring Physician's Name ("ward", RG1_UNCR) and Name of Physician(s)
    # Reading Study ("----", MR_small) are copied into the results unchanged, as the study's
    # identity must be; dciodvfy flags them as the retired PN form in the source as well.
    r"Retired Person Name form",
    # Classification labels are free text, coded under the private scheme 99PACSAI (declared in
    # the Coding Scheme Identification Sequence); dciodvfy only knows the standard schemes.
    r"Unrecognized defined term <99PACSAI>",
    # Presentation states: Laterality (General Series, Type 2C) is empty because the source
    # image gives none; dciodvfy cannot know that it is unknown rather than unpaired.
    r"attribute <Laterality>",
)


def load_sources(kind: str) -> list[Dataset]:
    """The source images of one kind, with pixel data."""
    if kind == "ct_series":
        return factory.ct_series(64)
    if kind == "rgb_capture":
        return [factory.rgb_secondary_capture()]
    name = {"cr_chest": "RG1_UNCR.dcm", "enhanced_ct": "eCT_Supplemental.dcm"}.get(
        kind, "MR_small.dcm"
    )
    path = get_testdata_file(name)
    assert path is not None, f"{name} missing: install the dev dependency pydicom-data"
    return [pydicom.dcmread(path)]


def provenance(
    model: str = "medimageparse", version: str = "emulator-1", rule: str = "default"
) -> Provenance:
    """A fixed provenance for tests: emulated model, fixed creation time."""
    return Provenance(ModelIdentity(model, version, emulated=True), rule, "0.1.0", CREATED)


def block_masks(sources: list[Dataset], n_prompts: int) -> npt.NDArray[np.bool_]:
    """Masks with a different block per prompt, on the middle frames; the last prompt empty."""
    frames, rows, cols = frame_count(sources), sources[0].Rows, sources[0].Columns
    masks = np.zeros((n_prompts, frames, rows, cols), dtype=np.bool_)
    for p in range(n_prompts - 1):
        top, left = rows * (p + 1) // (n_prompts + 2), cols * (p + 1) // (n_prompts + 2)
        first, last = frames // 3, max(2 * frames // 3, frames // 3 + 1)
        masks[p, first:last, top : top + rows // 5, left : left + cols // 4] = True
    return masks


def write(obj: Dataset, folder: Path, name: str) -> Path:
    """Write a result object as a Part 10 file."""
    path = folder / f"{name}.dcm"
    obj.save_as(path, enforce_file_format=True)
    return path


def dciodvfy(path: Path) -> list[str]:
    """Run dciodvfy; fail on any error or unknown warning; return the warnings it printed."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    lines = run.stderr.splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    assert run.returncode == 0 and not errors, f"dciodvfy errors on {path.name}: {errors}"
    unknown = [w for w in warnings if not any(re.search(p, w) for p in ACCEPTED_WARNINGS)]
    assert not unknown, f"unexpected dciodvfy warnings on {path.name}: {unknown}"
    return warnings


def root_evaluations(sr: Dataset) -> tuple[list[tuple[str, str]], list[str]]:
    """The root-level Qualitative Evaluations (TID 1500 row 12) of an SR, as written.

    Returns (concept meaning, value meaning) of its CODE items and the values of its TEXT items.
    """
    coded: list[tuple[str, str]] = []
    texts: list[str] = []
    for container in sr.ContentSequence:
        if container.ConceptNameCodeSequence[0].CodeValue != QUALITATIVE_EVALUATIONS.value:
            continue
        for item in container.ContentSequence:
            if item.ValueType == "CODE":
                name, value = item.ConceptNameCodeSequence[0], item.ConceptCodeSequence[0]
                coded.append((str(name.CodeMeaning), str(value.CodeMeaning)))
            elif item.ValueType == "TEXT":
                texts.append(str(item.TextValue))
    return coded, texts


def masks_read_back(path: Path, sources: list[Dataset], n_segments: int) -> npt.NDArray[np.bool_]:
    """The SEG's segments as (segments, frames, rows, cols) on the source frames, via highdicom."""
    seg = hd.seg.segread(path)
    numbers = list(range(1, n_segments + 1))
    if len(sources) == 1 and frame_count(sources) > 1:
        frames = list(range(1, frame_count(sources) + 1))
        pixels = seg.get_pixels_by_source_frame(
            sources[0].SOPInstanceUID,
            source_frame_numbers=frames,
            segment_numbers=numbers,
            assert_missing_frames_are_empty=True,
        )
    else:
        pixels = seg.get_pixels_by_source_instance(
            [ds.SOPInstanceUID for ds in sources],
            segment_numbers=numbers,
            assert_missing_frames_are_empty=True,
        )
    return np.moveaxis(np.asarray(pixels, dtype=np.bool_), -1, 0)


def frontal_of(sources: list[Dataset]) -> ImageFrame:
    """The image (and frame, for a multi-frame) the findings are drawn on."""
    image = sources[len(sources) // 2]
    return ImageFrame(image, 2 if frame_count([image]) > 1 else None)


def findings_for(image: Dataset) -> list[PixelFinding]:
    """Three findings: one without boxes, one with two boxes, one with one box."""
    rows, cols = image.Rows, image.Columns
    return [
        PixelFinding("The heart size is normal."),
        PixelFinding(
            "A small right pleural effusion is present.",
            (
                PixelBox(cols * 0.1, rows * 0.5, cols * 0.4, rows * 0.8),
                PixelBox(1.5, 2.25, 9.0, 7.5),
            ),
        ),
        PixelFinding(
            "The aorta is tortuous.", (PixelBox(cols * 0.4, rows * 0.2, cols * 0.6, rows * 0.7),)
        ),
    ]


def rectangle(box: PixelBox) -> npt.NDArray[np.float32]:
    """The closed five-point polyline expected for a box."""
    return np.array(
        [
            [box.x_min, box.y_min],
            [box.x_max, box.y_min],
            [box.x_max, box.y_max],
            [box.x_min, box.y_max],
            [box.x_min, box.y_min],
        ],
        dtype=np.float32,
    )
