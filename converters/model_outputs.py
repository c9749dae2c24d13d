"""Typed model answers, shared by the model clients (which produce them) and the result builders
(which turn them into DICOM). Plain data: no I/O, nothing from ``listener``.

Geometry conventions: CXRReportGen boxes stay in the model's normalized [0, 1] convention here
(the centre-crop mapping to pixels is :mod:`converters.geometry`'s job); MedImageParse masks stay in
model space (N x 1024 x 1024, 0/255) until mapped back onto the source grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

# MedImageParse's 16 output categories (docs/models.md §3.2).
PARSE_CATEGORIES: tuple[str, ...] = (
    "liver",
    "lung",
    "kidney",
    "pancreas",
    "heart anatomies",
    "brain anatomies",
    "eye anatomies",
    "vessel",
    "other organ",
    "tumor",
    "infection",
    "other lesion",
    "fluid disturbance",
    "other abnormality",
    "histology structure",
    "other",
)


@dataclass(frozen=True)
class ModelIdentity:
    """Which model produced an answer, for algorithm identification in result objects."""

    name: str  # medimageinsight, cxrreportgen, medimageparse, medimageparse3d
    version: str  # model version or deployment name; "emulator-<version>" when emulated
    emulated: bool = False


@dataclass(frozen=True)
class Embeddings:
    """MedImageInsight answer for one row: unit-norm 1024-float vectors and the log-temperature."""

    image: npt.NDArray[np.float32] | None
    text: npt.NDArray[np.float32] | None
    scaling_factor: float | None = None


@dataclass(frozen=True)
class Box:
    """A normalized [0, 1] box (x_min, y_min, x_max, y_max) on the frontal image."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float


@dataclass(frozen=True)
class CxrFinding:
    """One sentence of the CXRReportGen draft report and the boxes that ground it (may be none)."""

    text: str
    boxes: tuple[Box, ...] = ()


@dataclass(frozen=True)
class CxrReport:
    """CXRReportGen answer for one study: findings in the order the model gave them."""

    findings: tuple[CxrFinding, ...]

    @property
    def text(self) -> str:
        return " ".join(finding.text for finding in self.findings)


@dataclass(frozen=True)
class ParseResult:
    """MedImageParse answer for one image: one 0/255 uint8 mask per prompt, in model space."""

    masks: npt.NDArray[np.uint8]  # shape (n_prompts, height, width), 1024 x 1024 from the model
    prompts: tuple[str, ...]
    categories: tuple[str, ...]


@dataclass(frozen=True)
class Parse3DResult:
    """MedImageParse 3D answer: a label volume (0 background, k the k-th prompt), input geometry."""

    labels: npt.NDArray[np.integer]  # shape as the input NIfTI volume (x, y, z)
    prompts: tuple[str, ...]
    affine: npt.NDArray[np.float64] = field(default_factory=lambda: np.eye(4))
