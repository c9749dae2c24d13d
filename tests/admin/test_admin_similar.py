"""Similar studies through the admin server over real HTTP: the study page in headless Chromium
lists the other studies most like one (similarity, modality, received date, a link to each), and
the page and ``/api/similar/<uid>`` each exclude a study by modality and by received date."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from peers import chromium, free_port

from listener.admin import AdminServer, start_admin
from listener.settings import load_settings
from listener.store.embeddings import EmbeddingStore
from listener.store.journal import InstanceRecord, Journal

pytestmark = pytest.mark.integration

DAY = 86400.0
JAN_1 = 1767225600.0  # 2026-01-01 00:00 UTC
# study, modality, received day of January 2026, tilt from the query's vector (more: less alike)
STUDIES = [
    ("1.2.9.1", "CT", 1, 0.0),  # the query
    ("1.2.9.2", "CT", 1, 0.1),
    ("1.2.9.3", "MR", 2, 0.3),
    ("1.2.9.4", "CT", 3, 0.6),
    ("1.2.9.5", "MR", 1, 1.5),
]
QUERY = STUDIES[0][0]


def _seed(journal_path: Path) -> None:
    """The studies, one instance each, with an embedding tilted from the query's by its tilt."""
    journal, store = Journal(journal_path), EmbeddingStore(journal_path)
    try:
        for study, modality, day, tilt in STUDIES:
            journal.record_instance(
                InstanceRecord(
                    sop_instance_uid=f"{study}.1",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    study_uid=study,
                    series_uid=f"{study}.0",
                    modality=modality,
                    transfer_syntax="1.2.840.10008.1.2.1",
                    path=f"spool/{study}.dcm",
                    size=1,
                    received_at=JAN_1 + (day - 1) * DAY + 3600,
                    generation=0,
                ),
                quiet_period_s=10.0,
            )
            store.put(f"{study}.1", study, [1.0, tilt] + [0.0] * 1022, "v1", now=JAN_1)
    finally:
        journal.close()
        store.close()


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[AdminServer]:
    """The admin server over a data folder holding the studies above."""
    settings = load_settings(
        None, data_dir=tmp_path / "data", disk_min_free_mb=0, admin_port=free_port()
    )
    settings.data_dir.mkdir(parents=True)
    _seed(settings.journal_path)
    server = start_admin(settings)
    try:
        yield server
    finally:
        server.stop()


def _rows(dom: str) -> list[tuple[str, float, str, str, str]]:
    """Each similar-study row of the page: study, similarity, link, modality, received day."""
    rows = re.findall(
        r'<tr data-similar-study="([^"]+)"><td>([0-9.]+)</td><td class="uid"><a href="([^"]+)">'
        r"[^<]*</a></td><td>([^<]*)</td><td>([^<]*)</td></tr>",
        dom,
    )
    return [(s, float(score), link, modality, day) for s, score, link, modality, day in rows]


def test_study_page_lists_similar_studies_in_chromium(admin: AdminServer, tmp_path: Path) -> None:
    """Chromium renders the query study's page with the four other studies, most alike first,
    each with its similarity, modality, received date and a link to its own page, which
    renders too; the dashboard links each study to its page."""
    dom = chromium(tmp_path / "profile", "--dump-dom", f"{admin.url}/studies/{QUERY}")
    rows = _rows(dom)
    assert [(r[0], r[3], r[4]) for r in rows] == [
        ("1.2.9.2", "CT", "2026-01-01"),
        ("1.2.9.3", "MR", "2026-01-02"),
        ("1.2.9.4", "CT", "2026-01-03"),
        ("1.2.9.5", "MR", "2026-01-01"),
    ]
    scores = [r[1] for r in rows]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(0.995, abs=1e-3)
    assert all(r[2] == f"/studies/{r[0]}" for r in rows)
    other = chromium(tmp_path / "profile", "--dump-dom", f"{admin.url}{rows[0][2]}")
    assert _rows(other)[0][0] == QUERY
    dashboard = chromium(tmp_path / "profile", "--dump-dom", f"{admin.url}/")
    assert f'<a href="/studies/{QUERY}">' in dashboard


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("modality=MR", ["1.2.9.3", "1.2.9.5"]),
        ("since=2026-01-02", ["1.2.9.3", "1.2.9.4"]),
        ("until=2026-01-01", ["1.2.9.2", "1.2.9.5"]),
        ("modality=CT&since=2026-01-01&until=2026-01-01", ["1.2.9.2"]),
    ],
)
def test_page_and_api_filter_by_modality_and_date(
    admin: AdminServer, query: str, expected: list[str]
) -> None:
    """A modality or received-date filter leaves out the studies that do not pass it, on the
    study page and in /api/similar alike (the unfiltered answer holds all four)."""
    with httpx.Client(base_url=admin.url, timeout=30) as client:
        page = client.get(f"/studies/{QUERY}?{query}")
        api = client.get(f"/api/similar/{QUERY}.1?top=10&{query}")
        everyone = client.get(f"/api/similar/{QUERY}.1?top=10").json()
    assert page.status_code == 200 and api.status_code == 200
    assert [r[0] for r in _rows(page.text.replace("class=uid", 'class="uid"'))] == expected
    assert [n["study_uid"] for n in api.json()] == expected
    assert len(everyone) == 4


def test_bad_dates_and_unknown_studies_are_refused(admin: AdminServer) -> None:
    """A date that is not YYYY-MM-DD is a 400 naming the fields; an unknown study is a 404."""
    with httpx.Client(base_url=admin.url, timeout=30) as client:
        bad = client.get(f"/studies/{QUERY}?since=yesterday")
        missing = client.get("/studies/9.9.9")
    assert bad.status_code == 400 and "since" in bad.text
    assert missing.status_code == 404
