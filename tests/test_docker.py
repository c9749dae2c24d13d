"""The container files are valid: compose resolves and hadolint finds no errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def test_compose_config_resolves() -> None:
    """`docker compose config` accepts compose.yaml and wires the listener to Orthanc."""
    env = dict(os.environ, PACSAI_ADMIN_TOKEN="test-token")
    result = subprocess.run(
        [_tool("docker-compose"), "-f", str(ROOT / "docker" / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert set(config["services"]) == {"listener", "orthanc"}
    listener = config["services"]["listener"]
    assert listener["environment"]["PACSAI_DESTINATIONS__PACS__HOST"] == "orthanc"
    assert any(v["target"] == "/var/lib/pacs-ai" for v in listener["volumes"])


def test_compose_config_requires_admin_token() -> None:
    """Without an admin token the compose file refuses to resolve (the API is not loopback)."""
    env = {k: v for k, v in os.environ.items() if k != "PACSAI_ADMIN_TOKEN"}
    result = subprocess.run(
        [_tool("docker-compose"), "-f", str(ROOT / "docker" / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode != 0
    assert "PACSAI_ADMIN_TOKEN" in result.stderr


def test_hadolint_reports_no_errors() -> None:
    """Hadolint finds nothing at error level (nor warnings) in the Dockerfile."""
    result = subprocess.run(
        [
            _tool("hadolint"),
            "--no-color",
            "--failure-threshold",
            "warning",
            str(ROOT / "docker" / "Dockerfile"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
