"""A model key never goes over cleartext, and a real endpoint without its key stops start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from listener.errors import ConfigError
from listener.settings import load_settings

CLI = [sys.executable, "-m", "listener.cli"]


def serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``pacs-ai serve`` with model settings from the environment; it must stop at start-up."""
    return subprocess.run(
        [*CLI, "serve", "--port", "0", "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PACSAI_ADMIN_PORT": "0", **env},
    )


@pytest.mark.integration
def test_http_endpoint_with_key_stops_serve_naming_the_setting(tmp_path: Path) -> None:
    """An http:// endpoint with a key stops ``pacs-ai serve`` naming the endpoint setting, and
    the key is not printed."""
    done = serve(
        tmp_path,
        PACSAI_MODELS__CXRREPORTGEN__ENDPOINT="http://cxr.example.org/score",
        PACSAI_MODELS__CXRREPORTGEN__KEY="sekrit-key-123",
    )
    assert done.returncode != 0
    assert "models.cxrreportgen.endpoint" in done.stderr
    assert "cleartext" in done.stderr
    assert "sekrit-key-123" not in done.stdout + done.stderr


@pytest.mark.integration
def test_real_endpoint_without_key_stops_serve_naming_the_setting(tmp_path: Path) -> None:
    """A real endpoint with ``auth: key`` and no key stops ``pacs-ai serve`` naming the key."""
    done = serve(tmp_path, PACSAI_MODELS__MEDIMAGEPARSE__ENDPOINT="https://parse.example.org/score")
    assert done.returncode != 0
    assert "models.medimageparse.key" in done.stderr


@pytest.mark.parametrize(
    "models",
    [
        {"cxrreportgen": {"endpoint": "http://cxr.example.org/score", "auth": "entra"}},
        {"medimageinsight": {"endpoint": "http://10.1.2.3/score", "key": "k"}},
    ],
)
def test_cleartext_credentials_are_refused(models: dict[str, object]) -> None:
    """Key or Entra auth over http:// to a non-loopback host is a settings error."""
    with pytest.raises(ConfigError, match=r"\.endpoint: an http:// endpoint would send"):
        load_settings(None, models=models)


@pytest.mark.parametrize(
    "endpoint", ["http://127.0.0.1:8123/score", "http://localhost:9/score", "https://x.org/s"]
)
def test_loopback_emulator_and_https_with_key_are_fine(endpoint: str) -> None:
    """The loopback emulator may be called over http with a key; https always."""
    settings = load_settings(None, models={"cxrreportgen": {"endpoint": endpoint, "key": "k"}})
    assert settings.models.cxrreportgen.endpoint == endpoint
