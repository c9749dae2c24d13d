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


SCALE = ROOT / "docker" / "compose.scale.yaml"
SCALE_SECRETS = {
    "PACSAI_ADMIN_TOKEN": "test-token",
    "POSTGRES_PASSWORD": "test-password",
    "S3_ACCESS_KEY_ID": "test-key-id",
    "S3_SECRET_ACCESS_KEY": "test-secret",
}


def _scale_config() -> dict[str, object]:
    result = subprocess.run(
        [_tool("docker-compose"), "-f", str(SCALE), "config"],
        capture_output=True,
        text=True,
        env=dict(os.environ, **SCALE_SECRETS),
        check=True,
    )
    config: dict[str, object] = yaml.safe_load(result.stdout)
    return config


def test_scale_compose_wires_roles_database_spool_and_balancer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """compose.scale.yaml resolves: two receive and two work hosts, each with its own data
    folder, whose environment loads as settings naming the shared PostgreSQL journal and the S3
    spool; HAProxy balances over exactly the receivers with the repository's haproxy.cfg, which
    HAProxy itself accepts with that environment."""
    from listener.settings import load_settings

    services = _scale_config()["services"]
    assert isinstance(services, dict)
    assert set(services) == {
        "receiver-1",
        "receiver-2",
        "worker-1",
        "worker-2",
        "haproxy",
        "postgres",
        "seaweedfs",
        "certs",
        "orthanc",
    }
    roles = {}
    for name in ("receiver-1", "receiver-2", "worker-1", "worker-2"):
        service = services[name]
        command = service["command"]
        roles[name] = command[command.index("--role") + 1]
        assert command[command.index("--executor-id") + 1] == name
        assert [v["source"] for v in service["volumes"]] == [name, "certs"]
        with monkeypatch.context() as patch:
            for key, value in service["environment"].items():
                patch.setenv(key, str(value))
            settings = load_settings(None)
        assert settings.database_url is not None
        assert settings.journal_database.engine == "postgresql"
        assert settings.spool_url is not None and str(settings.spool_url).startswith("s3://")
        assert str(settings.s3.endpoint_url).startswith("https://")  # no key in clear
    assert roles == {
        "receiver-1": "receive",
        "receiver-2": "receive",
        "worker-1": "work",
        "worker-2": "work",
    }
    balancer = services["haproxy"]["environment"]
    assert {balancer["RECEIVER_1"], balancer["RECEIVER_2"]} == {
        "receiver-1:11112",
        "receiver-2:11112",
    }
    (mount,) = services["haproxy"]["volumes"]
    assert Path(mount["source"]) == ROOT / "docker" / "haproxy.cfg"
    check = subprocess.run(
        ["haproxy", "-c", "-f", mount["source"]],
        capture_output=True,
        text=True,
        env=dict(os.environ, **{k: str(v) for k, v in balancer.items()}),
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_scale_compose_requires_its_secrets() -> None:
    """Without the database password or the S3 keys the scale-out compose file does not resolve:
    no default secret is baked in."""
    for missing in ("POSTGRES_PASSWORD", "S3_SECRET_ACCESS_KEY"):
        env = {k: v for k, v in os.environ.items() if k not in SCALE_SECRETS}
        env.update({k: v for k, v in SCALE_SECRETS.items() if k != missing})
        result = subprocess.run(
            [_tool("docker-compose"), "-f", str(SCALE), "config", "-q"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert result.returncode != 0
        assert missing in result.stderr
