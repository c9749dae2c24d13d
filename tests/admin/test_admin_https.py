"""The admin API over HTTPS (``admin_tls``), with the bearer token off loopback."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
from peers import free_port
from tlscerts import make_pki

from listener.admin import start_admin
from listener.settings import load_settings

TOKEN = "correct-horse-battery-staple"
pytestmark = pytest.mark.integration


def test_admin_api_over_https_needs_the_token(tmp_path: Path) -> None:
    """With a certificate the admin API speaks HTTPS only (verified against the CA); off
    loopback it answers 401 without a token or with a wrong one, 200 with the right one."""
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        disk_min_free_mb=0,
        admin_host="0.0.0.0",
        admin_port=port,
        admin_token=TOKEN,
        admin_tls={"cert_file": pki.server.cert, "key_file": pki.server.key},
    )
    server = start_admin(settings)
    try:
        assert server.url.startswith("https://")
        with httpx.Client(
            base_url=f"https://127.0.0.1:{port}", verify=ssl.create_default_context(cafile=pki.ca)
        ) as client:
            assert client.get("/healthz").status_code == 200
            assert client.get("/api/jobs").status_code == 401
            wrong = client.get("/api/jobs", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            good = client.get("/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"})
            assert good.status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)  # no cleartext
    finally:
        server.stop()
