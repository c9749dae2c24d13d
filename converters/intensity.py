"""Stored pixel values to 8-bit display values, the way a PACS viewer would show them.

The grayscale pipeline of PS3.3 C.11 (Modality LUT, then VOI LUT, then Presentation LUT), ending
in 0..255:

1. Modality LUT (C.11.1): Rescale Slope/Intercept or a Modality LUT Sequence, giving for CT
   Hounsfield units.
2. VOI (C.11.2): the dataset's own VOI LUT Sequence or Window Center/Width when it has one (its
   first pair; the standard lets the application choose and the first is what viewers open
   with), else a configured CT preset given as a range of HU, else the model's default
   percentile clip. The official toolkit applies only the last two (docs/models.md §5.1), so a
   windowed PACS image would reach the model with a different contrast than a reader sees.
3. MONOCHROME1 (C.7.6.3.1.2: minimum value shown white) is inverted, which the toolkit also
   omits.

Colour images (RGB, YBR_*, palette) skip the grayscale steps and come out as 8-bit RGB.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut

from converters.frames import frame_view, is_colour, stored_values

UInt8Image = npt.NDArray[np.uint8]
FloatImage = npt.NDArray[np.float64]

# MedImageParse's CT presets, ranges in HU (docs/models.md §5.3, the toolkit's min_max ranges).
CT_PRESETS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "ct-abdomen": (-150.0, 250.0),
        "ct-lung": (-1000.0, 1000.0),
        "ct-pelvis": (-55.0, 200.0),
        "ct-liver": (-25.0, 230.0),
        "ct-colon": (-68.0, 187.0),
        "ct-pancreas": (-100.0, 200.0),
    }
)

_WINDOW_FUNCTIONS = frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"})


@dataclass(frozen=True)
class IntensityPolicy:
    """What to do when the dataset has no window of its own.

    ``preset`` names one of :data:`CT_PRESETS`; without one, values are clipped at the
    ``percentiles`` (fractions, as the toolkit gives them: (0.01, 0.99) is the 1st to the 99th
    percentile) and scaled to 0..255.
    """

    preset: str | None = None
    percentiles: tuple[float, float] = (0.01, 0.99)

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in CT_PRESETS:
            known = ", ".join(sorted(CT_PRESETS))
            raise ValueError(f"unknown intensity preset {self.preset!r}; known: {known}")
        low, high = self.percentiles
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 1, got {low}, {high}")


def range_to_uint8(values: FloatImage, low: float, high: float) -> UInt8Image:
    """Clip to [low, high] and scale linearly onto 0..255 (a flat range gives all zeros)."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.clip(values, low, high) - low) * (255.0 / (high - low))
    return np.rint(scaled).astype(np.uint8)


def window_to_uint8(
    values: FloatImage, center: float, width: float, function: str = "LINEAR"
) -> UInt8Image:
    """Apply a window (PS3.3 C.11.2.1.2) with an output range of 0..255.

    LINEAR is the standard's default, with its half-pixel offsets (C.11.2.1.2.1); LINEAR_EXACT
    maps [c - w/2, c + w/2] exactly (C.11.2.1.3.2); SIGMOID follows C.11.2.1.3.1.
    """
    if function not in _WINDOW_FUNCTIONS:
        raise ValueError(f"unsupported VOI LUT Function {function!r}")
    if function == "SIGMOID":
        return np.rint(255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))).astype(np.uint8)
    if function == "LINEAR_EXACT":
        return range_to_uint8(values, center - width / 2.0, center + width / 2.0)
    if width < 1.0:
        raise ValueError(f"Window Width must be at least 1 for LINEAR, got {width}")
    # y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, clipped; equals this range mapping.
    low = center - 0.5 - (width - 1.0) / 2.0
    return range_to_uint8(values, low, low + width - 1.0) if width > 1.0 else _step(values, low)


def _step(values: FloatImage, threshold: float) -> UInt8Image:
    """A width-1 LINEAR window: a hard threshold."""
    return np.where(values > threshold, 255, 0).astype(np.uint8)


def modality_values(view: Dataset, stored: npt.NDArray[np.generic]) -> FloatImage:
    """Stored values through the Modality LUT (PS3.3 C.11.1), as floats (HU for CT)."""
    return np.asarray(apply_modality_lut(stored, view), dtype=np.float64)


def _first(value: object) -> float:
    """The first of a possibly multi-valued DS (several windows may be offered; C.11.2.1.2)."""
    if isinstance(value, MultiValue | list | tuple):
        return float(value[0])
    return float(str(value))


def lut_values(item: Dataset) -> npt.NDArray[np.uint16]:
    """A LUT item's LUT Data as numbers, whether it was encoded as OW or as US (C.11.2.1.1).

    OW data arrives as bytes, little endian (every transfer syntax the gateway accepts); US data
    as numbers. pydicom's ``apply_voi`` needs the file meta to read OW, which a frame view has
    not, and highdicom's presentation state reads OW only; this reads both.
    """
    data = item.LUTData
    if isinstance(data, bytes | bytearray):
        return np.frombuffer(bytes(data), dtype="<u2").astype(np.uint16)
    values = data if isinstance(data, MultiValue | list | tuple) else [data]
    return np.asarray([int(v) for v in values], dtype=np.uint16)


def apply_voi_lut(item: Dataset, values: FloatImage) -> FloatImage:
    """Map Modality LUT output through one VOI LUT item (PS3.3 C.11.2.1.1).

    The LUT Descriptor gives the number of entries (0 meaning 65536), the first input value
    mapped and the bits per entry; inputs below or above the table take its first or last entry.
    """
    entries, first, _bits = (int(v) for v in item.LUTDescriptor)
    table = lut_values(item)[: entries or 65536]
    if table.size == 0:
        raise ValueError("VOI LUT Sequence item has no LUT Data")
    indices = np.clip(np.rint(values).astype(np.int64) - first, 0, table.size - 1)
    return table[indices].astype(np.float64)


def own_voi(view: Dataset, values: FloatImage) -> UInt8Image | None:
    """The dataset's own VOI (VOI LUT Sequence, else first Window Center/Width), or None."""
    voi_lut = view.get("VOILUTSequence")
    if voi_lut:
        bits = int(voi_lut[0].LUTDescriptor[2])
        # The LUT is indexed by the (integral) Modality LUT output.
        mapped = apply_voi_lut(voi_lut[0], values)
        return range_to_uint8(mapped, 0.0, float(2**bits - 1))
    center, width = view.get("WindowCenter"), view.get("WindowWidth")
    if center in (None, "") or width in (None, ""):
        return None
    function = str(view.get("VOILUTFunction", "") or "LINEAR").upper()
    if function not in _WINDOW_FUNCTIONS:
        function = "LINEAR"  # the standard's default when the function is absent (C.11.2.1.3)
    width_value = _first(width)
    if width_value <= 0.0 or (function == "LINEAR" and width_value < 1.0):
        return None  # an invalid window (C.11.2.1.2) is ignored; the policy applies instead
    return window_to_uint8(values, _first(center), width_value, function)


def has_hounsfield_units(view: Dataset) -> bool:
    """Whether the Modality LUT output is in HU: a CT image, or Rescale Type HU (C.11.1.1.2)."""
    modality = str(view.get("Modality", "") or "").upper()
    return modality == "CT" or str(view.get("RescaleType", "") or "").upper() == "HU"


def policy_voi(values: FloatImage, policy: IntensityPolicy, *, hu: bool = True) -> UInt8Image:
    """A configured preset range (only for values in HU), else the policy's percentile clip.

    The presets are ranges of Hounsfield units; on an MR (whose values have no unit) a rule's
    CT preset would clip arbitrarily, so images not in HU use the percentiles, as
    ``config/rules.yaml`` says ("CT only; MR uses percentiles").
    """
    if policy.preset is not None and hu:
        low, high = CT_PRESETS[policy.preset]
        return range_to_uint8(values, low, high)
    low_q, high_q = policy.percentiles
    low, high = np.percentile(values, [low_q * 100.0, high_q * 100.0])
    return range_to_uint8(values, float(low), float(high))


def colour_to_uint8(rgb: npt.NDArray[np.generic], view: Dataset) -> UInt8Image:
    """Decoded colour pixels as 8-bit RGB (palette output and 16-bit RGB are scaled down)."""
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    palette = str(view.get("PhotometricInterpretation")) == "PALETTE COLOR"
    bits = 16 if palette else int(view.get("BitsStored", 16))
    return range_to_uint8(rgb.astype(np.float64), 0.0, float(2**bits - 1))


# Largest stored-value range mapped through a table (below): 2**16 entries, 0.5 MiB of floats.
_TABLE_MAX = 1 << 16


def elementwise_voi(
    view: Dataset, stored: npt.NDArray[np.generic], policy: IntensityPolicy
) -> UInt8Image | None:
    """The dataset's own VOI, else a preset, computed once per distinct stored value and
    looked up per pixel; None when neither applies (the percentile clip needs every pixel) or
    the stored values are not integers in a small range.

    Modality LUT, VOI and preset are functions of the stored value alone, and the same
    exactly rounded float64 operations on the same value give the same result, so the table
    gives exactly the pixels the whole-image computation gives (8 float passes over a
    3.6-megapixel radiograph become one lookup).
    """
    if stored.dtype.kind not in "iu" or stored.size == 0:
        return None
    if str(view.get("VOILUTFunction", "") or "").upper() == "SIGMOID":
        return None  # np.exp is not an exactly rounded operation: left to the whole image
    low, high = int(stored.min()), int(stored.max())
    if high - low >= min(_TABLE_MAX, stored.size):
        return None
    domain = np.arange(low, high + 1, dtype=stored.dtype)
    values = modality_values(view, domain)
    table = own_voi(view, values)
    if table is None and policy.preset is not None and has_hounsfield_units(view):
        table = range_to_uint8(values, *CT_PRESETS[policy.preset])
    if table is None:
        return None
    return table[stored.astype(np.intp) - low]


def display_pixels(
    ds: Dataset, index: int = 0, policy: IntensityPolicy | None = None
) -> UInt8Image:
    """Frame ``index`` of ``ds`` as 8-bit display values, gray (rows, cols) or RGB (.., 3)."""
    policy = policy or IntensityPolicy()
    view = frame_view(ds, index)
    stored = stored_values(ds, index)
    if is_colour(view):
        return colour_to_uint8(stored, view)
    shown = elementwise_voi(view, stored, policy)
    if shown is None:
        values = modality_values(view, stored)
        shown = own_voi(view, values)
        if shown is None:
            shown = policy_voi(values, policy, hu=has_hounsfield_units(view))
    if str(view.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        shown = np.subtract(255, shown, dtype=np.uint8)
    return shown
