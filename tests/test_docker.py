"""The container files are valid: compose resolves and hadolint finds no errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
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


def test_compose_destinations_are_reachable_from_the_container(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No destination the listener container would send to is its own loopback: sends there
    could never succeed (rules file destinations merged with the environment's)."""
    from listener.route.load import effective_rules
    from listener.settings import load_settings

    env = dict(os.environ, PACSAI_ADMIN_TOKEN="test-token")
    result = subprocess.run(
        [_tool("docker-compose"), "-f", str(ROOT / "docker" / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    listener = yaml.safe_load(result.stdout)["services"]["listener"]
    environment = {k: str(v) for k, v in listener["environment"].items()}
    rules_file = environment.pop("PACSAI_RULES_FILE", None)
    if rules_file is not None:
        mounts = {v["target"]: v["source"] for v in listener["volumes"] if v["type"] == "bind"}
        environment["PACSAI_RULES_FILE"] = mounts[rules_file]
    for key, value in environment.items():
        if key.startswith("PACSAI_"):
            monkeypatch.setenv(key, value)
    rules = effective_rules(load_settings(None))
    assert rules.destinations
    for name, destination in rules.destinations.items():
        assert destination.host not in ("127.0.0.1", "localhost", "::1"), name
