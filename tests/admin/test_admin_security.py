"""Admin access and rules reload over real HTTP: the token off loopback, validation of rules."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import structlog.testing
from peers import free_port

from listener.admin import AdminRecords, create_admin_app, open_state, start_admin
from listener.admin.security import is_loopback, presented_token
from listener.asgi import BackgroundServer
from listener.errors import ConfigError
from listener.route.load import effective_rules
from listener.route.model import rules_fingerprint
from listener.settings import Settings, load_settings

TOKEN = "correct-horse-battery-staple"
EXAMPLE_RULES = Path(__file__).resolve().parents[2] / "config" / "rules.yaml"


def _settings(tmp_path: Path, **values: object) -> Settings:
    return load_settings(None, data_dir=tmp_path / "data", disk_min_free_mb=0, **values)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("admin.example.org", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    """Only loopback addresses and localhost count as loopback; host names do not."""
    assert is_loopback(host) is loopback


def test_token_is_read_from_bearer_and_basic() -> None:
    """The token comes from a Bearer header or the password of Basic authentication."""
    basic = base64.b64encode(f"operator:{TOKEN}".encode()).decode()
    assert presented_token(f"Bearer {TOKEN}") == TOKEN
    assert presented_token(f"Basic {basic}") == TOKEN
    assert presented_token("Basic !!!") is None
    assert presented_token(f"Digest {TOKEN}") is None


def test_non_loopback_without_token_refuses_to_start(tmp_path: Path) -> None:
    """Binding the admin app to a non-loopback address with no token stops with a ConfigError
    that names admin_token."""
    settings = _settings(tmp_path, admin_host="0.0.0.0", admin_port=0)
    with pytest.raises(ConfigError, match="admin_token"):
        start_admin(settings)


@pytest.mark.integration
def test_token_required_off_loopback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bound to 0.0.0.0, every path but /healthz answers 401 without the right token and 200
    with it (Bearer or Basic); the token never appears in the logs."""
    port = free_port()
    settings = _settings(tmp_path, admin_host="0.0.0.0", admin_port=port, admin_token=TOKEN)
    with structlog.testing.capture_logs() as events:
        server = start_admin(settings)
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz").status_code == 200
        for path in ("/", "/readyz", "/metrics", "/api/studies", "/openapi.json"):
            denied = httpx.get(f"{base}{path}")
            assert denied.status_code == 401, path
            assert "Bearer" in denied.headers["www-authenticate"]
            wrong = httpx.get(f"{base}{path}", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401, path
            good = httpx.get(f"{base}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
            assert good.status_code == 200, path
        assert httpx.get(f"{base}/api/jobs", auth=("operator", TOKEN)).status_code == 200
        assert httpx.post(f"{base}/api/rules/reload", json={}).status_code == 401
    finally:
        server.stop()
    captured = capsys.readouterr()
    assert [e for e in events if e["event"] == "admin_listening"]
    assert TOKEN not in repr(events) + captured.out + captured.err


@pytest.fixture
def rules_app(tmp_path: Path) -> Iterator[tuple[str, Path, Settings]]:
    """An admin app whose settings name a rules file under tmp_path."""
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(EXAMPLE_RULES.read_text())
    settings = _settings(tmp_path, rules_file=rules_file)
    state = open_state(settings)
    with BackgroundServer(create_admin_app(state)) as server:
        yield server.url, rules_file, settings
    state.close()


@pytest.mark.integration
def test_rules_reload_validates_and_records(rules_app: tuple[str, Path, Settings]) -> None:
    """An invalid rules file is refused with 400 naming the rule and field; a valid one is
    recorded with its fingerprint for the workers to pick up."""
    url, rules_file, settings = rules_app
    good = rules_file.read_text()
    broken = good.replace("one_of: [CR, DX]", 'regex: "([unclosed"', 1)
    assert broken != good
    rules_file.write_text(broken)
    refused = httpx.post(f"{url}/api/rules/reload", json={})
    assert refused.status_code == 400
    message = refused.json()["error"]
    assert "rule 'chest-xray-ed' field match.all[0].regex: invalid regular expression" in message
    records = AdminRecords(settings.journal_path)
    assert records.latest_rules_reload() is None
    rules_file.write_text(good)
    accepted = httpx.post(f"{url}/api/rules/reload", json={})
    assert accepted.status_code == 200
    latest = records.latest_rules_reload()
    assert latest is not None
    assert latest.fingerprint == accepted.json()["fingerprint"]
    assert latest.fingerprint == rules_fingerprint(effective_rules(settings))
