"""The drift picture of one group: its MMD² readings over time, drifted readings in red.

Rendered on the server (Pillow), like the overlay pictures, so the dashboard needs no charting
script: one PNG per group at ``/api/drift/plot.png?group=...``. The readings come from
:mod:`listener.store.drift`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, ImageDraw

from listener.admin.state import AdminState
from listener.store.drift import DriftReading, DriftStore

WIDTH, HEIGHT, MARGIN = 480, 200, 24
LINE, DRIFTED, AXIS = (40, 90, 200), (220, 30, 30), (90, 90, 90)


def drift_readings(state: AdminState) -> dict[str, list[DriftReading]]:
    """Every group's readings, oldest first."""
    store = DriftStore(state.db_path, state.settings.drift)
    try:
        return {group: store.readings(group) for group in store.latest()}
    finally:
        store.close()


def render_drift(group: str, readings: Sequence[DriftReading]) -> bytes:
    """The PNG of ``readings``: MMD² by reading, points under drift.alpha drawn red."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, 4), f"embedding drift (MMD2) - {group}", fill=AXIS)
    left, top, right, bottom = MARGIN, MARGIN, WIDTH - MARGIN // 2, HEIGHT - MARGIN
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=AXIS)
    if readings:
        values = [max(r.statistic, 0.0) for r in readings]
        high = max(values) or 1.0
        step = (right - left) / max(len(values) - 1, 1)
        points = [
            (left + i * step, bottom - (v / high) * (bottom - top)) for i, v in enumerate(values)
        ]
        if len(points) > 1:
            draw.line(points, fill=LINE, width=2)
        for (x, y), reading in zip(points, readings, strict=True):
            colour = DRIFTED if reading.drifted else LINE
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((left + 4, top), f"max {high:.4f}", fill=AXIS)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
