"""``pacs-ai serve`` as a subprocess: its flags override the settings, and it says at start-up
which destinations, models (endpoint or emulator) and result targets it runs with."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from peers import free_port, run_gateway

pytestmark = pytest.mark.integration


def test_serve_flags_and_start_up_summary(tmp_path: Path) -> None:
    """--admin-port and --log-format beat the environment; the log names the destination, each
    model with its source, and the destination results go to."""
    admin_port = free_port()
    env = {
        "PACSAI_LOG_FORMAT": "console",
        "PACSAI_DESTINATIONS__PACS__AE_TITLE": "ORTHANC",
        "PACSAI_DESTINATIONS__PACS__HOST": "127.0.0.1",
        "PACSAI_DESTINATIONS__PACS__PORT": str(free_port()),
        "PACSAI_MODELS__CXRREPORTGEN__ENDPOINT": "http://127.0.0.1:9/score",
    }
    flags = ["--admin-port", str(admin_port), "--log-format", "json"]
    with run_gateway(tmp_path / "data", *flags, env=env) as gateway:
        assert gateway.admin_url == f"http://127.0.0.1:{admin_port}"
        assert httpx.get(f"{gateway.admin_url}/healthz").status_code == 200
        destinations = gateway.events("destination_configured")
        models = {event["model"]: event for event in gateway.events("model_configured")}
        results = gateway.events("results_destinations")
    assert [(e["destination"], e["peer"]) for e in destinations] == [
        ("pacs", f"ORTHANC@127.0.0.1:{env['PACSAI_DESTINATIONS__PACS__PORT']}")
    ]
    assert models["cxrreportgen"]["source"] == "endpoint"
    assert models["cxrreportgen"]["endpoint"] == "http://127.0.0.1:9/score"
    assert models["medimageparse"]["source"] == "emulator"
    assert models["medimageparse"]["endpoint"].startswith("http://127.0.0.1:")
    assert results[0]["destinations"] == ["pacs"]
