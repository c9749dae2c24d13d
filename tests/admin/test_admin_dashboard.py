"""The dashboard in headless Chromium after an end-to-end run: the processed study is listed with
its overlay picture, which the browser loads and which shows the coloured SEG overlay."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from admin_e2e import EndToEnd
from peers import chromium
from PIL import Image

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _coloured_pixels(png: bytes) -> int:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    return int((spread > 30).sum())


def _picture_in_dom(dom: str, uid: str) -> str:
    """The overlay URL of a study on the page, checking the browser loaded the picture."""
    study_row = rf'<tr data-study-uid="{re.escape(uid)}">.*?<td>done</td>'
    assert re.search(study_row, dom, re.S), f"study {uid} is not listed as done"
    image = re.search(
        rf'<img class="overlay" src="(/api/studies/{re.escape(uid)}/overlay.png)"'
        r'[^>]*data-loaded="(\w+)"',
        dom,
    )
    assert image is not None, f"the overlay picture of {uid} is not on the page"
    assert image.group(2) == "yes", f"the browser could not load the picture of {uid}"
    return image.group(1)


def test_dashboard_shows_the_processed_studies_with_pictures(e2e: EndToEnd, tmp_path: Path) -> None:
    """Chromium renders the dashboard with both studies done and their pictures loaded: the CT
    with its coloured SEG overlay, the chest CR with its finding boxes; a screenshot of the page
    is saved under the test's output and test-output/."""
    dom = chromium(tmp_path / "profile", "--dump-dom", f"{e2e.admin.url}/")
    assert 'data-stage="done"><b>2</b>' in dom
    for uid in (e2e.study_uid, e2e.chest_uid):
        picture = httpx.get(f"{e2e.admin.url}{_picture_in_dom(dom, uid)}", timeout=30)
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
        assert _coloured_pixels(picture.content) > 100, f"no coloured overlay on {uid}"

    screenshot = tmp_path / "dashboard.png"
    chromium(
        tmp_path / "profile",
        f"--screenshot={screenshot}",
        "--window-size=1280,1000",
        f"{e2e.admin.url}/",
    )
    assert Image.open(screenshot).size == (1280, 1000)
    out = REPO / "test-output"
    out.mkdir(exist_ok=True)
    shutil.copy(screenshot, out / "admin-dashboard.png")
