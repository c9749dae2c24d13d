"""Deterministic stand-in answers for the emulator, derived from the pixels. Not a clinical model.

Each function validates one request row the way the real service is documented to
(docs/models.md §1-§4) and returns that row's answer in the observed response shape. Invalid
input raises :class:`EmulatorInputError` carrying the HTTP status the service would answer.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import io
import json
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pybase64
from PIL import Image, UnidentifiedImageError

from converters.cxr import EMULATOR_DISCLAIMER
from listener.infer.wire import EMBEDDING_DIM, PARSE_SIZE, decode_b64

SCALING_FACTOR = 4.513362  # observed on every image row (docs/models.md §1.2)
EMULATOR_SENTENCE = EMULATOR_DISCLAIMER  # converters.cxr keeps it out of the findings
_THUMB = 32  # 32 × 32 = 1024 = EMBEDDING_DIM
_GRID = 100  # CXR boxes on a 0.01 grid, offset 0.005 (§2.2)
_MIN_REGION = 25  # bright grid cells a half-thorax needs before it gets a grounded finding

# First matching keyword wins: lesions before organs, so "liver tumor" is a tumor (§3.2 categories).
_CATEGORY_WORDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("tumor", "tumour", "neoplas", "cancer", "carcinoma", "mass", "nodule", "metasta"), "tumor"),
    (("infection", "covid", "pneumonia", "infect"), "infection"),
    (("effusion", "edema", "oedema", "fluid", "ascites"), "fluid disturbance"),
    (("lesion", "cyst", "polyp", "stone"), "other lesion"),
    (("abnormal", "fracture", "hemorrhage", "haemorrhage"), "other abnormality"),
    (("cell", "nucle", "gland", "histolog"), "histology structure"),
    (("liver", "hepat"), "liver"),
    (("lung", "pulmon"), "lung"),
    (("kidney", "renal"), "kidney"),
    (("pancrea",), "pancreas"),
    (("heart", "ventric", "atri", "myocard", "cardi"), "heart anatomies"),
    (("brain", "cerebr", "white matter", "gray matter", "grey matter"), "brain anatomies"),
    (("eye", "retina", "optic", "cornea", "macula"), "eye anatomies"),
    (("vessel", "aorta", "artery", "arteri", "vein", "venous"), "vessel"),
    (
        ("spleen", "stomach", "bladder", "prostate", "bowel", "colon", "uterus", "organ"),
        "other organ",
    ),
)


class EmulatorInputError(Exception):
    """Input the real service rejects: 400 from the endpoint, or 424 when the model container
    fails (with its status and reason in the ``ms-azureml-model-error-*`` headers)."""

    def __init__(self, status: int, message: str, container_status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.container_status = container_status


def _model_error(message: str) -> EmulatorInputError:
    return EmulatorInputError(424, message, container_status=400)


def _bytes_of(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise EmulatorInputError(400, f"{where}: expected a base64 string")
    try:
        return decode_b64(value)
    except (binascii.Error, ValueError) as exc:
        raise EmulatorInputError(400, f"{where}: not valid base64") from exc


def _gray(value: Any, where: str) -> npt.NDArray[np.float32]:
    try:
        with Image.open(io.BytesIO(_bytes_of(value, where))) as image:
            return np.asarray(image.convert("L"), dtype=np.float32)
    except (UnidentifiedImageError, OSError) as exc:
        raise _model_error(f"{where}: cannot decode the image") from exc


def _stable_vector(text: str) -> npt.NDArray[np.float64]:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    vector = np.random.default_rng(seed).standard_normal(EMBEDDING_DIM)
    return vector / np.linalg.norm(vector)


def image_vector(gray: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """A unit vector from the mean-removed 32×32 thumbnail: similar images, similar vectors."""
    thumb = Image.fromarray(gray).resize((_THUMB, _THUMB), Image.Resampling.BOX)
    vector = np.asarray(thumb, dtype=np.float64).ravel()
    mean = float(vector.mean())
    vector -= mean
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 1e-6 else _stable_vector(f"flat image {round(mean)}")


def _wants_scaling_factor(params: dict[str, Any]) -> bool:
    flag = params.get("get_scaling_factor", True)
    return str(flag).strip().lower() not in ("false", "0", "no")


def embed_row(row: dict[str, Any], params: dict[str, Any], index: int) -> dict[str, Any]:
    """MedImageInsight (§1.2): nested ``image_features``, flat ``text_features``, both unit-norm;
    ``""`` and ``null`` mean an absent side."""
    image, text = row.get("image"), row.get("text")
    if not image and not text:
        raise EmulatorInputError(400, f"input_data.data[{index}]: neither image nor text")
    answer: dict[str, Any] = {}
    if image:
        vector = image_vector(_gray(image, f"input_data.data[{index}] image"))
        answer["image_features"] = [vector.round(7).tolist()]
    if text:
        if not isinstance(text, str):
            raise EmulatorInputError(400, f"input_data.data[{index}] text: expected a string")
        answer["text_features"] = _stable_vector(" ".join(text.split())).round(7).tolist()
    if _wants_scaling_factor(params):
        answer["scaling_factor"] = SCALING_FACTOR
    return answer


def _grid_value(cell: int) -> float:
    return round(cell / _GRID + 0.005, 3)


def _bright_box(bright: npt.NDArray[np.bool_], offset: int) -> list[float] | None:
    rows, cols = np.nonzero(bright)
    if rows.size < _MIN_REGION or rows.min() == rows.max() or cols.min() == cols.max():
        return None
    x0, x1 = int(cols.min()) + offset, int(cols.max()) + offset
    return [
        _grid_value(x0),
        _grid_value(int(rows.min())),
        _grid_value(x1),
        _grid_value(int(rows.max())),
    ]


def cxr_findings(frontal: npt.NDArray[np.float32], has_prior: bool) -> list[list[Any]]:
    """Findings grounded on the bright regions of each half of the centre-cropped frontal image,
    normalized to the crop (the convention the official notebook undoes, §2.2)."""
    height, width = frontal.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = Image.fromarray(frontal[top : top + side, left : left + side])
    grid = np.asarray(crop.resize((_GRID, _GRID), Image.Resampling.BOX), dtype=np.float32)
    bright = grid > grid.mean() + grid.std()
    findings: list[list[Any]] = [[EMULATOR_SENTENCE, None]]
    half = _GRID // 2
    # Image left is the patient's right on a frontal chest radiograph.
    for side_name, part, offset in (
        ("right", bright[:, :half], 0),
        ("left", bright[:, half:], half),
    ):
        box = _bright_box(part, offset) if grid.std() > 0 else None
        if box is not None:
            findings.append([f"There is increased density in the {side_name} hemithorax.", [box]])
    if len(findings) == 1:
        findings.append(["No focal density is identified.", None])
    if has_prior:
        findings.append(["Compared with the prior image, the appearance is similar.", None])
    return findings


def cxr_row(row: dict[str, Any], index: int) -> dict[str, Any]:
    """CXRReportGen (§2.2): ``output`` is a JSON string of ``[sentence, boxes | null]``."""
    frontal = _gray(row.get("frontal_image"), f"input_data.data[{index}] frontal_image")
    for column in ("lateral_image", "prior_image"):
        if row.get(column):
            _gray(row[column], f"input_data.data[{index}] {column}")
    return {"output": json.dumps(cxr_findings(frontal, bool(row.get("prior_image"))))}


def split_prompts(text: Any, index: int) -> list[str]:
    """The prompts of one MedImageParse row (joined with ``&``), refusing an empty one."""
    prompts = [part.strip() for part in str(text or "").split("&") if part.strip()]
    if not prompts:
        raise _model_error(f"input_data.data[{index}] text: no prompt")
    return prompts


def category(prompt: str) -> str:
    """One of the 16 MedImageParse categories, from the words of the prompt."""
    lowered = prompt.lower()
    for words, name in _CATEGORY_WORDS:
        if any(word in lowered for word in words):
            return name
    return "other"


def _prompt_hash(prompt: str) -> int:
    return int.from_bytes(hashlib.sha256(prompt.lower().encode()).digest()[:4], "big")


def band_masks(
    gray: npt.NDArray[np.float32], prompts: list[str], bands: int = 4
) -> npt.NDArray[np.uint8]:
    """One 0/255 mask per prompt: the pixels in an intensity quartile (of the non-black,
    i.e. non-padding, pixels) chosen by the prompt, so masks follow the image content.

    The image holds 8-bit values (a PNG as the service takes it), so each mask is a lookup of
    the pixel's value in a 256-entry table of the same comparisons, one pass per prompt."""
    masks = np.zeros((len(prompts), *gray.shape), dtype=np.uint8)
    levels = gray.astype(np.uint8)  # exact: _gray's values are those of an 8-bit image
    counts = np.bincount(levels.ravel(), minlength=256)
    counts[0] = 0  # black is padding, not content
    if not counts.any():
        return masks
    # The content's values already sorted, from their histogram: the same values as
    # gray[gray > 0], so the same quantiles, without the copy and the selection over it.
    ordered = np.repeat(np.arange(256, dtype=gray.dtype), counts)
    edges = np.quantile(ordered, np.linspace(0, 1, bands + 1))
    values = np.arange(256, dtype=np.float32)
    for k, prompt in enumerate(prompts):
        band = _prompt_hash(prompt) % bands
        upper = values <= edges[band + 1] if band == bands - 1 else values < edges[band + 1]
        table = np.where((values > 0) & (values >= edges[band]) & upper, 255, 0).astype(np.uint8)
        np.take(table, levels, out=masks[k])
    return masks


# Stands in for a row's base64 mask data while the answer is serialized: the data is spliced in
# afterwards (:func:`encoded_answer`), so megabytes of base64 are not scanned twice for JSON
# escapes (base64 needs none). NUL cannot occur in base64 or in the rest of the answer unescaped.
_DATA_MARK = "\x00mask-data-{}\x00"


def parse_row(row: dict[str, Any], index: int) -> dict[str, Any]:
    """MedImageParse (§3.2): 1024×1024 input only (424 otherwise); masks serialized as a JSON
    string ``{data, shape, dtype}``; one category per prompt."""
    where = f"input_data.data[{index}] image"
    gray = _gray(row.get("image"), where)
    if gray.shape != (PARSE_SIZE, PARSE_SIZE):
        raise _model_error(
            f"{where}: MedImageParse accepts only {PARSE_SIZE}x{PARSE_SIZE} images, "
            f"got {gray.shape[1]}x{gray.shape[0]}"
        )
    prompts = split_prompts(row.get("text"), index)
    masks = band_masks(gray, prompts)
    features = {"data": _DATA_MARK.format(index), "shape": list(masks.shape), "dtype": "uint8"}
    return {
        "image_features": json.dumps(features),
        "text_features": [category(p) for p in prompts],
        _MASK_DATA: pybase64.b64encode(masks.tobytes()),
    }


_MASK_DATA = "\x00mask-data"  # the key of a row's mask data until it is spliced in


def encoded_answer(rows: list[dict[str, Any]]) -> bytes:
    """The JSON answer of ``rows``, each row's mask data (if any) in place of its mark."""
    data = {n: row.pop(_MASK_DATA) for n, row in enumerate(rows) if _MASK_DATA in row}
    encoded = json.dumps(rows).encode()
    parts, start = [], 0  # one join: each row's megabytes copied once, not once per later row
    for index, b64 in data.items():  # the marks come in row order
        mark = json.dumps(json.dumps(_DATA_MARK.format(index)))[3:-3].encode()
        at = encoded.index(mark, start)
        parts += [encoded[start:at], b64]
        start = at + len(mark)
    parts.append(encoded[start:])
    return b"".join(parts)


def parse3d_row(row: dict[str, Any], index: int) -> dict[str, Any]:
    r"""MedImageParse 3D (§4.2): a label volume with the input's shape and affine, labels 1..N in
    prompt order (intensity bands of the volume), as ``{"nifti_file": "{\"data\": b64}"}``."""
    where = f"input_data.data[{index}] image"
    raw = _bytes_of(row.get("image"), where)
    try:
        source = nib.Nifti1Image.from_bytes(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
        volume = np.asarray(source.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel and gzip raise several unrelated types for bad input
        raise _model_error(f"{where}: cannot read the NIfTI volume") from exc
    prompts = split_prompts(row.get("text"), index)
    dtype = np.uint8 if len(prompts) < 256 else np.uint16
    edges = np.quantile(volume, np.linspace(0, 1, len(prompts) + 2))
    labels = np.zeros(volume.shape, dtype=dtype)
    for label in range(1, len(prompts) + 1):
        labels[volume > edges[label]] = label
    if volume.max() == volume.min():
        labels[:] = 0
    output = nib.Nifti1Image(labels, source.affine)  # type: ignore[no-untyped-call]
    data = gzip.compress(output.to_bytes(), compresslevel=6, mtime=0)
    return {"nifti_file": json.dumps({"data": base64.b64encode(data).decode("ascii")})}
