"""The emulator's mark where an operator looks: the dashboard names the emulated models, and the
picture of a study whose results the emulator made says so."""

from __future__ import annotations

import io

import httpx
import pytest
from admin_e2e import EndToEnd
from PIL import Image

pytestmark = pytest.mark.integration


def test_dashboard_names_the_emulated_models(e2e: EndToEnd) -> None:
    """With no endpoint configured every model is emulated, and the page header says so."""
    page = httpx.get(f"{e2e.admin.url}/", timeout=30).text
    assert 'id="emulated"' in page
    for model in ("medimageinsight", "cxrreportgen", "medimageparse", "medimageparse3d"):
        assert model in page.split('id="emulated"', 1)[1].split("</span>", 1)[0]
    assert "not a clinical model" in page


def test_pictures_of_emulated_results_are_marked(e2e: EndToEnd) -> None:
    """The overlay picture carries the emulator caption (drawn, and as its PNG comment)."""
    for uid in (e2e.study_uid, e2e.chest_uid):
        answer = httpx.get(f"{e2e.admin.url}/api/studies/{uid}/overlay.png", timeout=30)
        assert answer.status_code == 200
        picture = Image.open(io.BytesIO(answer.content))
        assert "EMULATOR" in str(picture.info.get("Comment", "")), uid
