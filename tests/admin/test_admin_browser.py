"""The admin API against a hostile web page in the operator's browser, over real HTTP on
loopback without a token (the default): DNS rebinding (a foreign Host), cross-site and form
posts to the state-changing calls, and the security headers on every answer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from peers import free_port

from listener.admin import AdminServer, start_admin
from listener.settings import Settings, load_settings
from listener.store.jobs import JobState, JobStore
from listener.store.journal import InstanceRecord, Journal
from listener.store.records import AdminRecords

pytestmark = pytest.mark.integration

EXAMPLE_RULES = Path(__file__).resolve().parents[2] / "config" / "rules.yaml"
STUDY = "1.2.826.0.1.3680043.8.498.77"
EVIL = "evil.example"
FORM = "application/x-www-form-urlencoded"


@dataclass
class Gateway:
    """A running admin server over a data folder holding one study with one scheduled job."""

    settings: Settings
    admin: AdminServer
    job_id: int

    @property
    def authority(self) -> str:
        return self.admin.url.removeprefix("http://")

    def job_state(self) -> JobState:
        job = JobStore(self.settings.journal_path).get(self.job_id)
        assert job is not None
        return job.state


def _seed(settings: Settings) -> int:
    journal = Journal(settings.journal_path)
    try:
        journal.record_instance(
            InstanceRecord(
                sop_instance_uid=f"{STUDY}.1.1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                study_uid=STUDY,
                series_uid=f"{STUDY}.1",
                modality="CT",
                transfer_syntax="1.2.840.10008.1.2.1",
                path="spool/x.dcm",
                size=1,
                received_at=100.0,
                generation=0,
            ),
            quiet_period_s=10.0,
        )
    finally:
        journal.close()
    return JobStore(settings.journal_path).schedule(
        job_key=f"{STUDY}:0:r:t",
        study_uid=STUDY,
        generation=0,
        rule="r",
        task="t",
        payload={"model": "medimageparse"},
        priority=0,
        now=100.0,
    )


def _start(tmp_path: Path, **values: object) -> Iterator[Gateway]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(EXAMPLE_RULES.read_text())
    settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        disk_min_free_mb=0,
        admin_port=free_port(),
        rules_file=rules,
        **values,
    )
    job_id = _seed(settings)
    admin = start_admin(settings)
    try:
        yield Gateway(settings, admin, job_id)
    finally:
        admin.stop()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    """The admin server on 127.0.0.1, no token, default settings."""
    yield from _start(tmp_path)


READ_PATHS = (
    "/",
    "/api/studies",
    f"/api/studies/{STUDY}",
    f"/studies/{STUDY}",
    "/api/jobs",
    "/metrics",
    "/readyz",
)


@pytest.mark.parametrize("path", READ_PATHS)
def test_foreign_host_gets_no_data(gateway: Gateway, path: str) -> None:
    """A request naming another Host (a page on a rebinding domain) is answered 400 without the
    study, while the same request to the loopback address or localhost gets it."""
    port = gateway.authority.partition(":")[2]
    for host in (EVIL, f"{EVIL}:{port}", f"127.0.0.1.{EVIL}"):
        refused = httpx.get(f"{gateway.admin.url}{path}", headers={"Host": host})
        assert refused.status_code == 400, (host, refused.text)
        assert STUDY not in refused.text and "admin_allowed_hosts" in refused.text
    for host in (gateway.authority, f"localhost:{port}"):
        answered = httpx.get(f"{gateway.admin.url}{path}", headers={"Host": host})
        assert answered.status_code in (200, 503), (host, answered.text)  # 503: /readyz
    assert STUDY in httpx.get(f"{gateway.admin.url}/api/studies").text


def test_configured_host_names_are_answered(tmp_path: Path) -> None:
    """admin_allowed_hosts adds names to the allow-list."""
    for running in _start(tmp_path, admin_allowed_hosts=["gateway.example.org"]):
        url = f"{running.admin.url}/api/studies"
        assert httpx.get(url, headers={"Host": "gateway.example.org:8080"}).status_code == 200
        assert httpx.get(url, headers={"Host": EVIL}).status_code == 400


def _actions(gateway: Gateway) -> list[str]:
    base = gateway.admin.url
    return [
        f"{base}/api/rules/reload",
        f"{base}/api/jobs/{gateway.job_id}/retry",
        f"{base}/api/jobs/{gateway.job_id}/cancel",
    ]


def test_cross_site_posts_are_refused(gateway: Gateway) -> None:
    """Rules reload, job retry and job cancel refuse a form post from another site, a JSON post
    with a foreign Origin or a cross-site Sec-Fetch-Site, and a form-typed post with no Origin;
    nothing changes."""
    attempts: list[tuple[dict[str, str], int]] = [
        ({"Origin": f"http://{EVIL}", "Sec-Fetch-Site": "cross-site", "Content-Type": FORM}, 403),
        ({"Origin": f"http://{EVIL}", "Content-Type": "application/json"}, 403),
        ({"Origin": "null", "Content-Type": "application/json"}, 403),
        ({"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}, 403),
        ({"Sec-Fetch-Site": "same-site", "Content-Type": "application/json"}, 403),
        ({"Content-Type": FORM}, 415),
        ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
        ({"Content-Type": "text/plain"}, 415),
        ({}, 415),
    ]
    for url in _actions(gateway):
        for headers, status in attempts:
            body = "{}" if "json" in headers.get("Content-Type", "") else "a=b"
            answer = httpx.post(url, headers=headers, content=body)
            assert answer.status_code == status, (url, headers, answer.text)
        assert httpx.get(url).status_code == 405
    assert gateway.job_state() is JobState.SCHEDULED
    assert AdminRecords(gateway.settings.journal_path).latest_rules_reload() is None


def test_same_origin_json_posts_are_served(gateway: Gateway) -> None:
    """The dashboard's own origin (or a program sending no browser headers) may change state."""
    own = {
        "Origin": f"http://{gateway.authority}",
        "Sec-Fetch-Site": "same-origin",
        "Content-Type": "application/json",
    }
    reload_url, _, cancel_url = _actions(gateway)
    assert httpx.post(cancel_url, headers=own, content="{}").status_code == 200
    assert gateway.job_state() is JobState.CANCELED
    assert httpx.post(reload_url, json={}).status_code == 200


@pytest.mark.parametrize(
    ("path", "host"),
    [
        ("/", None),
        (f"/studies/{STUDY}", None),
        ("/api/studies", None),
        ("/dashboard.js", None),
        ("/nowhere", None),
        ("/", EVIL),
    ],
)
def test_every_answer_carries_the_security_headers(
    gateway: Gateway, path: str, host: str | None
) -> None:
    """Pages, API answers, assets, 404s and refusals all carry a CSP without inline script,
    frame-ancestors 'none', forms sent only to the gateway itself (the study page's filter),
    X-Frame-Options, nosniff and no-referrer."""
    headers = {"Host": host} if host else {}
    answer = httpx.get(f"{gateway.admin.url}{path}", headers=headers)
    csp = answer.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert "form-action 'self'" in csp
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"


def test_dashboard_has_no_inline_script_or_style(gateway: Gateway) -> None:
    """The pages load their script and style from the app (the CSP would block inline ones)."""
    page = httpx.get(f"{gateway.admin.url}/").text
    assert '<script src="/dashboard.js"></script>' in page and "<style" not in page
    assert "<script>" not in page and " style=" not in page
    study = httpx.get(f"{gateway.admin.url}/studies/{STUDY}").text
    assert '<link rel="stylesheet" href="/dashboard.css">' in study
    assert "<style" not in study and "<script" not in study and " style=" not in study
    script = httpx.get(f"{gateway.admin.url}/dashboard.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "localStorage" in script.text
    style = httpx.get(f"{gateway.admin.url}/dashboard.css")
    assert style.headers["content-type"].startswith("text/css") and "body{" in style.text
