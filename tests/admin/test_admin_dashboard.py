"""The dashboard in headless Chromium after an end-to-end run: the processed study is listed with
its overlay picture, which the browser loads and which shows the coloured SEG overlay."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from admin_e2e import EndToEnd
from peers import nodelay_env
from PIL import Image

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def _chromium(profile: Path, *args: str) -> str:
    exe = shutil.which("chromium")
    assert exe is not None, "chromium is missing: run scripts/install-system-deps"
    result = subprocess.run(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=nodelay_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_dashboard_shows_the_processed_study_with_its_picture(
    e2e: EndToEnd, tmp_path: Path
) -> None:
    """Chromium renders the dashboard with the study done, its overlay loaded, and a screenshot
    of the page is saved under the test's output and test-output/."""
    dom = _chromium(tmp_path / "profile", "--dump-dom", f"{e2e.admin.url}/")
    uid = e2e.study_uid
    assert re.search(rf'<tr data-study-uid="{re.escape(uid)}">.*?<td>done</td>', dom, re.S)
    image = re.search(
        rf'<img class="overlay" src="(/api/studies/{re.escape(uid)}/overlay.png)"'
        r'[^>]*data-loaded="(\w+)"',
        dom,
    )
    assert image is not None, "the study's overlay picture is not on the page"
    assert image.group(2) == "yes", "the browser could not load the overlay picture"
    assert 'data-stage="done"><b>1</b>' in dom

    picture = httpx.get(f"{e2e.admin.url}{image.group(1)}", timeout=30)
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(picture.content)).convert("RGB")).astype(int)
    coloured = (np.abs(pixels[..., 0] - pixels[..., 1]) > 30) | (
        np.abs(pixels[..., 1] - pixels[..., 2]) > 30
    )
    assert coloured.sum() > 100, "the overlay has no coloured (segment) pixels"

    screenshot = tmp_path / "dashboard.png"
    _chromium(
        tmp_path / "profile",
        f"--screenshot={screenshot}",
        "--window-size=1280,1000",
        f"{e2e.admin.url}/",
    )
    shot = Image.open(screenshot)
    assert shot.size == (1280, 1000)
    out = REPO / "test-output"
    out.mkdir(exist_ok=True)
    shutil.copy(screenshot, out / "admin-dashboard.png")
