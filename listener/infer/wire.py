"""The Azure ML online-endpoint wire format: the MLflow "split" request envelope and the decoding
of every documented and observed response shape (docs/models.md §0, §1.2, §2.2, §3.2, §4.2, §8).

Pure functions, no I/O. Decoders raise :class:`~listener.errors.PermanentModelError` naming the
model when an answer does not have the shape the contract promises: a retry cannot fix that.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pybase64

from converters.model_outputs import (
    Box,
    CxrFinding,
    CxrReport,
    Embeddings,
    Parse3DResult,
    ParseResult,
)
from listener.errors import PermanentModelError

EMULATOR_HEADER = "x-pacs-ai-emulator"
EMULATOR_NOTICE = "not a clinical model"
EMBEDDING_DIM = 1024
PARSE_SIZE = 1024
# Documented row limits per request ("index" range), docs/models.md §1.1, §2.1, §3.1.
MI_MAX_ROWS = 1024
CXR_MAX_ROWS = 10
PARSE_MAX_ROWS = 256
PROMPT_SEPARATOR = " & "
_GZIP_MAGIC = b"\x1f\x8b"


def encode_b64(data: bytes) -> str:
    """Base64 in the style of the official examples: MIME lines of 76 characters (§0).

    pybase64 (SIMD) writes the same bytes as ``base64.encodebytes`` in a quarter of the time;
    its decoder is the one that matters: a MedImageParse answer carries megabytes per frame."""
    return pybase64.encodebytes(data).decode("ascii")


def decode_b64(text: str) -> bytes:
    """Decode base64 leniently: whitespace and MIME line breaks are ignored, padding is optional.
    Strict base64 (what the services send) is decoded as it is, without a cleaned copy: a
    MedImageParse answer carries megabytes of it per frame (pybase64 decodes well-formed base64
    as ``base64.b64decode`` does, about 60 times faster; what it refuses goes on to the slower
    paths, so the outcome is the standard library's for any text)."""
    try:
        return pybase64.b64decode(text, validate=True)
    except binascii.Error:
        pass
    try:  # MIME lines (what the official examples send): 4x faster than the general clean-up
        return pybase64.b64decode(text.replace("\n", ""), validate=True)
    except binascii.Error:
        pass
    # Anything else (other whitespace, missing or surplus padding) by the standard library,
    # whose reading of malformed padding pybase64 does not share.
    compact = "".join(text.split())
    compact += "=" * (-len(compact) % 4)
    return base64.b64decode(compact, validate=True)


def envelope(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], params: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The request body: ``input_data`` {columns, index 0..n-1, data} and ``params`` (§0)."""
    return {
        "input_data": {
            "columns": list(columns),
            "index": list(range(len(rows))),
            "data": [list(row) for row in rows],
        },
        "params": dict(params) if params is not None else {},
    }


def join_prompts(prompts: Sequence[str]) -> str:
    """Join MedImageParse prompts with `` & `` (§3.1); a prompt may not itself hold ``&``."""
    cleaned = [prompt.strip() for prompt in prompts]
    if not cleaned or any(not prompt for prompt in cleaned):
        raise ValueError("MedImageParse needs at least one non-empty prompt")
    if any("&" in prompt for prompt in cleaned):
        raise ValueError("a MedImageParse prompt may not contain '&', which separates prompts")
    return PROMPT_SEPARATOR.join(cleaned)


def malformed(model: str, why: str) -> PermanentModelError:
    """The error for an answer that does not follow the model's documented shape."""
    return PermanentModelError(f"malformed answer from {model} endpoint: {why}")


def answer_rows(body: Any, expected: int, model: str) -> list[dict[str, Any]]:
    """Split an answer into one object per input row.

    Real endpoints return a top-level array, one element per row; the docs draw a bare object,
    which is accepted for a single row (§8.1).
    """
    rows = [body] if isinstance(body, dict) else body
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise malformed(model, "expected a JSON array of objects")
    if len(rows) != expected:
        raise malformed(model, f"{len(rows)} answers for {expected} rows")
    return rows


def _vector(value: Any, model: str, field: str) -> npt.NDArray[np.float32] | None:
    if value is None:
        return None
    try:
        vector = np.squeeze(np.asarray(value, dtype=np.float32))
    except (TypeError, ValueError) as exc:
        raise malformed(model, f"{field} is not a list of numbers") from exc
    if vector.ndim != 1:
        raise malformed(model, f"{field} has shape {vector.shape}, expected one vector")
    return vector


def _stacked(value: Any, rows: int, model: str, field: str) -> list[Any]:
    """Per-row vectors from a bare object's ``[[...], [...]]`` (or flat, for one row)."""
    if value is None:
        return [None] * rows
    matrix = np.asarray(value, dtype=np.float32)
    matrix = matrix.reshape(-1, matrix.shape[-1]) if matrix.ndim else matrix
    if matrix.ndim != 2 or matrix.shape[0] != rows:
        raise malformed(model, f"{field} has shape {matrix.shape} for {rows} rows")
    return list(matrix)


def decode_embeddings(body: Any, expected: int) -> list[Embeddings]:
    """MedImageInsight answers (§1.2): per-row objects, vectors flat or nested (squeezed),
    ``scaling_factor`` optional; or the documented bare object holding all rows' vectors."""
    model = "medimageinsight"
    if isinstance(body, dict) and expected > 1:
        images = _stacked(body.get("image_features"), expected, model, "image_features")
        texts = _stacked(body.get("text_features"), expected, model, "text_features")
        factor = body.get("scaling_factor")
        rows: list[dict[str, Any]] = [
            {"image_features": image, "text_features": text, "scaling_factor": factor}
            for image, text in zip(images, texts, strict=True)
        ]
    else:
        rows = answer_rows(body, expected, model)
    answers = []
    for row in rows:
        factor = row.get("scaling_factor")
        if isinstance(factor, list):  # a bare object may give one factor per row
            factor = np.squeeze(np.asarray(factor, dtype=np.float64)).item()
        answers.append(
            Embeddings(
                image=_vector(row.get("image_features"), model, "image_features"),
                text=_vector(row.get("text_features"), model, "text_features"),
                scaling_factor=float(factor) if factor is not None else None,
            )
        )
    return answers


def _box(value: Any) -> Box:
    x_min, y_min, x_max, y_max = (float(v) for v in value)
    return Box(x_min=x_min, y_min=y_min, x_max=x_max, y_max=y_max)


def decode_cxr_report(body: Any) -> CxrReport:
    """CXRReportGen answer (§2.2): ``output`` is a JSON string (observed) or a list (documented) of
    ``[sentence, boxes | null]``; boxes stay in the normalized centre-crop convention."""
    model = "cxrreportgen"
    output = answer_rows(body, 1, model)[0].get("output")
    try:
        findings = json.loads(output) if isinstance(output, str) else output
        if not isinstance(findings, list):
            raise TypeError("output is not a list")
        parsed = []
        for sentence, boxes in findings:
            if not isinstance(sentence, str):
                raise TypeError("a finding's text is not a string")
            parsed.append(CxrFinding(sentence, tuple(_box(box) for box in boxes or ())))
    except (TypeError, ValueError) as exc:
        raise malformed(model, f"output is not a list of [text, boxes]: {exc}") from exc
    return CxrReport(findings=tuple(parsed))


def decode_array(value: Any, model: str, field: str) -> npt.NDArray[Any]:
    """An array serialized as ``{"data": <b64 raw C-order bytes>, "shape", "dtype"}``, given as a
    JSON string (as real endpoints do) or as an object (§3.2)."""
    try:
        meta = json.loads(value) if isinstance(value, str) else value
        raw = decode_b64(meta["data"])
        return np.frombuffer(raw, dtype=np.dtype(meta["dtype"])).reshape(meta["shape"])
    except (TypeError, ValueError, KeyError, binascii.Error) as exc:
        raise malformed(model, f"{field} is not a serialized array: {exc}") from exc


def as_mask_255(array: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """Masks as 0..255 uint8: 0..255 uint8 is kept (the official overlay thresholds at >128);
    0/1 or boolean masks become 0/255; other types (probabilities) are thresholded at 0.5."""
    if array.dtype == np.uint8 and array.max(initial=0) > 1:
        return array
    if array.dtype.kind in "biu" and array.max(initial=0) > 1:
        return np.where(array > 127, 255, 0).astype(np.uint8)
    return np.where(array > 0.5, 255, 0).astype(np.uint8)


def decode_nifti_labels(data: bytes, model: str) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Label volume and affine from NIfTI bytes (gzip-compressed or not)."""
    try:
        raw = gzip.decompress(data) if data[:2] == _GZIP_MAGIC else data
        image = nib.Nifti1Image.from_bytes(raw)
        labels = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel raises several unrelated types for a bad file
        raise malformed(model, f"nifti_file is not a NIfTI volume: {exc}") from exc
    if labels.dtype.kind == "f":
        labels = np.rint(labels).astype(np.int32)
    return labels, np.asarray(image.affine, dtype=np.float64)


def labels_from_masks(stack: npt.NDArray[Any]) -> npt.NDArray[np.int32]:
    """Turn the unmerged branch's ``(N, D, H, W)`` masks, or a ``(D, H, W)`` label array, into a
    label volume in NIfTI ``(x, y, z)`` order (§4.2 variant)."""
    if stack.ndim == 3:
        return np.transpose(stack, (2, 1, 0)).astype(np.int32)
    labels = np.zeros(stack.shape[1:], dtype=np.int32)
    for index, mask in enumerate(as_mask_255(stack), start=1):
        labels[mask > 128] = index
    return np.transpose(labels, (2, 1, 0))


def decode_parse(body: Any, prompts: tuple[str, ...]) -> ParseResult:
    """MedImageParse answer (§3.2) to a one-row request."""
    return decode_parse_rows(body, prompts, 1)[0]


def decode_parse_rows(body: Any, prompts: tuple[str, ...], expected: int) -> list[ParseResult]:
    """MedImageParse answer (§3.2) to a request of ``expected`` rows, one result per row in
    row order."""
    return [_parse_row(row, prompts) for row in answer_rows(body, expected, "medimageparse")]


def _parse_row(row: dict[str, Any], prompts: tuple[str, ...]) -> ParseResult:
    """One answer row: ``image_features`` a serialized ``[N, 1024, 1024]`` uint8 array,
    ``text_features`` one of the 16 categories per prompt."""
    model = "medimageparse"
    masks = as_mask_255(decode_array(row.get("image_features"), model, "image_features"))
    if masks.ndim == 2:
        masks = masks[np.newaxis]
    if masks.ndim != 3 or masks.shape[0] != len(prompts):
        raise malformed(model, f"masks of shape {masks.shape} for {len(prompts)} prompts")
    categories = row.get("text_features")
    if not isinstance(categories, list) or len(categories) != len(prompts):
        raise malformed(model, "text_features is not one category per prompt")
    return ParseResult(
        masks=masks, prompts=prompts, categories=tuple(str(item) for item in categories)
    )


def decode_parse3d(body: Any, prompts: tuple[str, ...]) -> Parse3DResult:
    """MedImageParse 3D answer (§4.2): ``nifti_file`` a stringified ``{"data": b64 .nii.gz}``
    (or that object), else the unmerged branch's ``image_features`` array."""
    model = "medimageparse3d"
    row = answer_rows(body, 1, model)[0]
    if "nifti_file" in row:
        try:
            value = row["nifti_file"]
            meta = json.loads(value) if isinstance(value, str) else value
            data = decode_b64(meta["data"])
        except (TypeError, ValueError, KeyError) as exc:
            raise malformed(model, f"nifti_file is not {{data: base64}}: {exc}") from exc
        labels, affine = decode_nifti_labels(data, model)
        return Parse3DResult(labels=labels, prompts=prompts, affine=affine)
    if "image_features" in row:
        stack = decode_array(row["image_features"], model, "image_features")
        return Parse3DResult(labels=labels_from_masks(stack), prompts=prompts)
    raise malformed(model, "neither nifti_file nor image_features in the answer")
