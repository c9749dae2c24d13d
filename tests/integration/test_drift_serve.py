"""Embedding drift through ``pacs-ai serve``: 100 studies of one image
family, then 100 of another, from one calling AE; its group drifts within the second batch
while a group whose input did not change stays low; the gauge, the audit record, the readiness
warning and the dashboard plot (headless Chromium) show it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest
from factory import family_study
from peers import Gateway, chromium, nodelay_env, run_gateway, wait_for

from listener.store.audit import AuditLog
from listener.store.drift import DriftStore
from listener.store.embeddings import EmbeddingStore

pytestmark = pytest.mark.integration

SHIFTED, STEADY = "calling_ae=SCANNER1,modality=CT", "calling_ae=SCANNER2,modality=CT"
BATCH, STEADY_BATCH = 100, 30


def _send(port: int, calling_ae: str, family: str, first: int, n: int, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(first, first + n):
        path = folder / f"{calling_ae}-{family}-{i:04d}.dcm"
        family_study(family, i).save_as(path, enforce_file_format=True)
        paths.append(str(path))
    subprocess.run(
        ["storescu", "-aet", calling_ae, "-aec", "PACSAI", "127.0.0.1", str(port), *paths],
        check=True,
        env=nodelay_env(),
        timeout=300,
    )


def _embedded(gateway: Gateway) -> int:
    store = EmbeddingStore(gateway.data_dir / "journal.sqlite")
    try:
        return store.count()
    finally:
        store.close()


def _readings(gateway: Gateway, group: str) -> list[bool]:
    store = DriftStore(gateway.data_dir / "journal.sqlite")
    try:
        return [r.drifted for r in store.readings(group)]
    finally:
        store.close()


def test_drift_of_one_senders_input_is_seen_everywhere(tmp_path: Path) -> None:
    """SCANNER1 sends 100 disc studies then 100 band studies, SCANNER2 disc studies all along:
    SCANNER1's group drifts within the second batch (never before it), SCANNER2's never."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: embed\n    match: {attribute: Modality, equals: CT}\n"
        "    tasks: [{model: medimageinsight, labels: [a disc, a band]}]\n"
    )
    env = {
        "PACSAI_RULES_FILE": str(rules),
        "PACSAI_DRIFT__REFERENCE_SIZE": "50",
        "PACSAI_DRIFT__WINDOW_SIZE": "30",
        "PACSAI_DRIFT__MIN_WINDOW": "10",
    }
    studies = tmp_path / "studies"
    with run_gateway(tmp_path / "var", "--quiet-period", "1", env=env) as gateway:
        _send(gateway.port, "SCANNER1", "disc", 0, BATCH, studies)
        _send(gateway.port, "SCANNER2", "disc", 1000, 2 * STEADY_BATCH, studies)
        first = BATCH + 2 * STEADY_BATCH
        wait_for("the first batch", lambda: _embedded(gateway) >= first, 600)
        before = _readings(gateway, SHIFTED)
        assert before and not any(before), "drifted before its input changed"
        _send(gateway.port, "SCANNER1", "band", 2000, BATCH, studies)
        _send(gateway.port, "SCANNER2", "disc", 3000, STEADY_BATCH, studies)
        wait_for(
            "the second batch", lambda: _embedded(gateway) >= first + BATCH + STEADY_BATCH, 600
        )

        after = _readings(gateway, SHIFTED)[len(before) :]
        assert any(after), "no drift within the second batch"
        assert not any(_readings(gateway, STEADY)), "the unchanged group drifted"

        metrics = httpx.get(f"{gateway.admin_url}/metrics", timeout=30).text
        assert f'pacsai_embedding_drifted{{group="{SHIFTED}"}} 1.0' in metrics
        assert f'pacsai_embedding_drifted{{group="{STEADY}"}} 0.0' in metrics
        assert f'pacsai_embedding_drift{{group="{SHIFTED}"}}' in metrics
        ready = httpx.get(f"{gateway.admin_url}/readyz", timeout=30).json()
        assert any(SHIFTED in w for w in ready["warnings"])
        assert not any(STEADY in w for w in ready["warnings"])

        audit = AuditLog(gateway.data_dir / "journal.sqlite")
        try:
            summaries = [r["summary"] for r in audit.records(limit=1000)]
        finally:
            audit.close()
        assert any(s.startswith(f"embedding drift in group {SHIFTED}") for s in summaries)
        assert not any(f"embedding drift in group {STEADY}" in s for s in summaries)

        dom = chromium(tmp_path / "profile", "--dump-dom", f"{gateway.admin_url}/")
        plot = re.search(
            r'<figure data-drift-group="' + re.escape(SHIFTED) + r'"><img class="drift"'
            r' src="([^"]+)"[^>]*data-loaded="(\w+)"',
            dom,
        )
        assert plot is not None, "no drift plot for the drifted group"
        assert plot.group(2) == "yes", "the browser could not load the drift plot"
        assert "DRIFTED" in dom
