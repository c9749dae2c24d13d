"""Model geometry: masks and boxes to model space and back onto the source pixel grid."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from converters.geometry import (
    GridMap,
    PixelBox,
    box_to_model,
    box_to_source,
    cxr_box_to_source,
    mask_to_model,
    mask_to_source,
    pad_square_map,
    resample_image,
    source_box_to_cxr,
    stretch_map,
)
from converters.model_outputs import Box

sides = st.integers(min_value=16, max_value=2048)
fractions = st.floats(min_value=0.0, max_value=1.0)


def ellipse(
    rows: int, cols: int, cy: float, cx: float, ry: float, rx: float
) -> npt.NDArray[np.bool_]:
    """A filled ellipse drawn on a rows x cols grid (pixel centres inside)."""
    yy, xx = np.mgrid[0:rows, 0:cols] + 0.5
    inside: npt.NDArray[np.bool_] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return inside


def dilate(
    mask: npt.NDArray[np.bool_], radius: int, outside: bool = False
) -> npt.NDArray[np.bool_]:
    """Binary dilation with a (2r+1) square, by shifting; ``outside`` fills beyond the edge."""
    out = mask.copy()
    padded = np.pad(mask, radius, constant_values=outside)
    rows, cols = mask.shape
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy : dy + rows, dx : dx + cols]
    return out


def iou(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    """Intersection over union of two masks."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def near_boundary(truth: npt.NDArray[np.bool_], step: int) -> npt.NDArray[np.bool_]:
    """Pixels within ``step`` of the region's edge, the image's edge counting as outside."""
    return dilate(truth, step) & dilate(~truth, step, outside=True)


def round_trip(truth: npt.NDArray[np.bool_], grid: GridMap) -> npt.NDArray[np.bool_]:
    """The truth as the model would see it (0/255 uint8), mapped back to the source grid."""
    model = mask_to_model(truth, grid)
    assert model.shape == (grid.model_rows, grid.model_cols)
    return mask_to_source(model.astype(np.uint8) * 255, grid)


@settings(max_examples=60, deadline=None)
@given(rows=sides, cols=sides, cy=fractions, cx=fractions, ry=fractions, rx=fractions)
def test_parse_mask_round_trip_is_exact_or_within_resampling_step(
    rows: int, cols: int, cy: float, cx: float, ry: float, rx: float
) -> None:
    """Any region survives pad+resize and back: exactly when upsampled, else within one step."""
    grid = pad_square_map(rows, cols)
    truth = ellipse(rows, cols, cy * rows, cx * cols, 1 + ry * rows / 2, 1 + rx * cols / 2)
    back = round_trip(truth, grid)
    assert back.shape == (rows, cols)
    step = math.ceil(1 / grid.scale_x)  # source pixels per model pixel, rounded up
    if step == 1:
        assert np.array_equal(back, truth)
    assert not np.any((back ^ truth) & ~near_boundary(truth, step))


@settings(max_examples=60, deadline=None)
@given(rows=sides, cols=sides, cy=fractions, cx=fractions, ry=fractions, rx=fractions)
def test_parse_mask_round_trip_iou_for_regions_the_model_can_resolve(
    rows: int, cols: int, cy: float, cx: float, ry: float, rx: float
) -> None:
    """A region at least 100 model pixels across maps back with IoU >= 0.98 for any image size."""
    grid = pad_square_map(rows, cols)
    min_radius = 50 / grid.scale_x  # 50 model pixels, in source pixels
    assume(min(rows, cols) >= 2 * min_radius)
    ry_px = min_radius + ry * (rows / 2 - min_radius)
    rx_px = min_radius + rx * (cols / 2 - min_radius)
    cy_px = ry_px + cy * (rows - 2 * ry_px)
    cx_px = rx_px + cx * (cols - 2 * rx_px)
    truth = ellipse(rows, cols, cy_px, cx_px, ry_px, rx_px)
    assert iou(round_trip(truth, grid), truth) >= 0.98


@settings(max_examples=40, deadline=None)
@given(rows=sides, cols=sides)
def test_parse_model_space_holds_the_image_only_inside_the_pad(rows: int, cols: int) -> None:
    """The whole image maps onto a centred band of the 1024 grid with black (False) pad around."""
    grid = pad_square_map(rows, cols)
    model = mask_to_model(np.ones((rows, cols), dtype=bool), grid)
    side = max(rows, cols)
    x0, y0 = (side - cols) // 2 * 1024 / side, (side - rows) // 2 * 1024 / side
    x1, y1 = x0 + cols * 1024 / side, y0 + rows * 1024 / side
    ys, xs = np.nonzero(model)
    assert xs.min() >= math.floor(x0) and xs.max() < math.ceil(x1)
    assert ys.min() >= math.floor(y0) and ys.max() < math.ceil(y1)
    assert model.sum() >= (x1 - x0 - 2) * (y1 - y0 - 2)


@settings(max_examples=40, deadline=None)
@given(rows=sides, cols=sides, cy=fractions, cx=fractions)
def test_insight_stretch_round_trip_within_one_step(
    rows: int, cols: int, cy: float, cx: float
) -> None:
    """The stretched MedImageInsight grid also maps a region back within one resampling step."""
    grid = stretch_map(rows, cols, 480)
    truth = ellipse(rows, cols, cy * rows, cx * cols, rows / 4 + 1, cols / 4 + 1)
    back = round_trip(truth, grid)
    step = max(math.ceil(1 / grid.scale_x), math.ceil(1 / grid.scale_y))
    assert not np.any((back ^ truth) & ~near_boundary(truth, step))


def boxes_in(rows: int, cols: int) -> st.SearchStrategy[PixelBox]:
    """Boxes inside a rows x cols image, in continuous pixel coordinates."""
    xs = st.floats(min_value=0, max_value=cols)
    ys = st.floats(min_value=0, max_value=rows)
    return st.tuples(xs, ys, xs, ys).map(
        lambda t: PixelBox(min(t[0], t[2]), min(t[1], t[3]), max(t[0], t[2]), max(t[1], t[3]))
    )


def assert_within_one_pixel(a: PixelBox, b: PixelBox) -> None:
    """Every corner coordinate of ``a`` is within one pixel of ``b``'s."""
    pairs = zip(
        (a.x_min, a.y_min, a.x_max, a.y_max), (b.x_min, b.y_min, b.x_max, b.y_max), strict=True
    )
    for got, want in pairs:
        assert abs(got - want) <= 1.0


@settings(max_examples=100, deadline=None)
@given(data=st.data(), rows=sides, cols=sides)
def test_parse_boxes_round_trip_within_one_pixel(data: st.DataObject, rows: int, cols: int) -> None:
    """A source box mapped into the 1024 grid and back lands within one pixel of itself."""
    grid = pad_square_map(rows, cols)
    box = data.draw(boxes_in(rows, cols))
    model = box_to_model(box, grid)
    for value in (model.x_min, model.y_min, model.x_max, model.y_max):
        assert 0.0 <= value <= 1024.0 + 1e-9
    assert_within_one_pixel(box_to_source(model, grid), box)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), rows=sides, cols=sides)
def test_cxr_boxes_round_trip_within_one_pixel(data: st.DataObject, rows: int, cols: int) -> None:
    """A box inside the centre crop, normalized as CXRReportGen reports it, maps back exactly."""
    side = min(rows, cols)
    left, top = (cols - side) // 2, (rows - side) // 2
    inner = data.draw(boxes_in(side, side))
    box = PixelBox(inner.x_min + left, inner.y_min + top, inner.x_max + left, inner.y_max + top)
    normalized = source_box_to_cxr(box, rows, cols)
    for value in (normalized.x_min, normalized.y_min, normalized.x_max, normalized.y_max):
        assert -1e-9 <= value <= 1.0 + 1e-9
    assert_within_one_pixel(cxr_box_to_source(normalized, rows, cols), box)


def test_cxr_box_follows_the_centre_crop_formula() -> None:
    """Normalized boxes scale by min(w, h) and shift by (w - side)//2, as the notebook does."""
    rows, cols = 1000, 1501
    box = cxr_box_to_source(Box(0.25, 0.5, 0.75, 1.0), rows, cols)
    side, shift = 1000, (1501 - 1000) // 2
    assert box == PixelBox(0.25 * side + shift, 0.5 * side, 0.75 * side + shift, 1.0 * side)


def test_resample_pads_with_black_and_keeps_aspect() -> None:
    """A white 100x50 image becomes a centred white band 512 wide on a black 1024 square."""
    grid = pad_square_map(100, 50)
    out = resample_image(np.full((100, 50), 255, dtype=np.uint8), grid)
    assert out.shape == (1024, 1024)
    assert out[:, :250].max() == 0 and out[:, -250:].max() == 0
    assert out[:, 262:762].min() == 255


def test_resample_stretches_for_insight_and_keeps_rgb() -> None:
    """An RGB image resized for MedImageInsight fills the whole 480 square, colour kept."""
    image = np.zeros((30, 90, 3), dtype=np.uint8)
    image[..., 0] = 200
    out = resample_image(image, stretch_map(30, 90, 480))
    assert out.shape == (480, 480, 3)
    assert out[..., 0].min() == 200 and out[..., 1:].max() == 0


def test_uint8_masks_threshold_at_128() -> None:
    """Model masks in 0..255 count as foreground above 128, the toolkit's threshold."""
    grid = pad_square_map(1024, 1024)
    mask = np.zeros((1024, 1024), dtype=np.uint8)
    mask[:10] = 128
    mask[10:20] = 129
    back = mask_to_source(mask, grid)
    assert not back[:10].any() and back[10:20].all() and not back[20:].any()
