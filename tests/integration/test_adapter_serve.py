"""An adapter end to end: 200 synthetic studies of two visibly different
image families go through ``pacs-ai serve`` (storescu), whose emulator derives their embeddings
from the pixels; ``pacs-ai adapter train`` learns the families from them; a ``model: adapter``
rule then routes new studies of each family to its storescp, with a classification SR naming the
adapter, and an adapter of another model version is refused, naming both versions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from factory import IMAGE_FAMILIES, family_study
from peers import (
    StoreSCP,
    embedding_count,
    run_gateway,
    run_storescp,
    send_with_storescu,
    wait_for,
    written_uids,
)
from pydicom import Dataset, dcmread

pytestmark = pytest.mark.integration

TRAINING_PER_FAMILY = 100
NEW_PER_FAMILY = 3


def _studies(folder: Path, first: int, per_family: int) -> dict[str, list[Path]]:
    """``per_family`` one-image studies of each family, written under ``folder``."""
    out: dict[str, list[Path]] = {}
    for family in IMAGE_FAMILIES:
        paths = []
        for i in range(first, first + per_family):
            path = folder / family / f"{i:04d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            family_study(family, i).save_as(path, enforce_file_format=True)
            paths.append(path)
        out[family] = paths
    return out


def _received(scp: StoreSCP) -> set[str]:
    return written_uids(scp.folder)


def _texts(ds: Dataset) -> dict[str, str]:
    """The SR's TEXT content items by concept name (TID 4019 Algorithm Name, Version...)."""
    found: dict[str, str] = {}
    for item in ds.get("ContentSequence", []):
        if "TextValue" in item:
            found[str(item.ConceptNameCodeSequence[0].CodeMeaning)] = str(item.TextValue)
        found |= _texts(item)
    return found


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "listener.cli", *args], capture_output=True, text=True, timeout=300
    )


EMBED_RULES = """
rules:
  - name: embed
    match: {attribute: Modality, equals: CT}
    tasks:
      - {model: medimageinsight, labels: [a bright disc, a bright band]}
"""


def _adapter_rules(ports: dict[str, int]) -> str:
    return (
        "destinations:\n"
        + "".join(
            f"  {f}s: {{ae_title: {f.upper()}S, host: 127.0.0.1, port: {port}}}\n"
            for f, port in ports.items()
        )
        + "rules:\n"
        "  - name: families\n"
        "    match: {attribute: Modality, equals: CT}\n"
        "    tasks:\n"
        "      - model: adapter\n"
        "        adapter: families\n"
        "        routes: {" + ", ".join(f"{f}: {f}s" for f in ports) + "}\n"
    )


def test_adapter_trained_on_served_studies_routes_new_studies_by_family(tmp_path: Path) -> None:
    """Train on 200 served studies (CV accuracy reported), route 3 new studies of each family to
    its own storescp through the adapter; the SR names the adapter; another model version's
    adapter is refused naming both versions."""
    data_dir = tmp_path / "var"
    training = _studies(tmp_path / "training", 0, TRAINING_PER_FAMILY)
    rules = tmp_path / "rules.yaml"
    rules.write_text(EMBED_RULES)
    env = {"PACSAI_RULES_FILE": str(rules)}
    with run_gateway(data_dir, "--quiet-period", "1", env=env) as gateway:
        send_with_storescu(gateway.port, [p for paths in training.values() for p in paths])
        wait_for("200 embeddings", lambda: embedding_count(gateway) >= 2 * TRAINING_PER_FAMILY, 600)

    labels = tmp_path / "labels.csv"
    labels.write_text(
        "study_instance_uid,label\n"
        + "".join(
            f"{dcmread(p, stop_before_pixels=True).StudyInstanceUID},{family}\n"
            for family, paths in training.items()
            for p in paths
        )
    )
    trained = _cli(
        "adapter", "train", "families", "--labels", str(labels), "--data-dir", str(data_dir)
    )
    assert trained.returncode == 0, trained.stderr
    assert "cross-validation: 5 stratified folds, accuracy 1.000" in trained.stdout
    assert "saved adapter families v1 (200 samples" in trained.stdout
    shown = json.loads(_cli("adapter", "show", "families", "--data-dir", str(data_dir)).stdout)
    model_version = shown["model_version"]
    assert model_version.startswith("emulator-")

    new = _studies(tmp_path / "new", 1000, NEW_PER_FAMILY)
    with (
        run_storescp(tmp_path / "discs", "DISCS") as discs,
        run_storescp(tmp_path / "bands", "BANDS") as bands,
    ):
        rules.write_text(_adapter_rules({"disc": discs.port, "band": bands.port}))
        with run_gateway(data_dir, "--quiet-period", "1", env=env, log_name="adapter.log") as gw:
            send_with_storescu(gw.port, [p for paths in new.values() for p in paths])
            for scp, family in ((discs, "disc"), (bands, "band")):
                expected = {str(dcmread(p).SOPInstanceUID) for p in new[family]}
                wait_for(f"the {family} studies", lambda s=scp, e=expected: _received(s) == e)
            study = str(dcmread(new["disc"][0]).StudyInstanceUID)
            (sr,) = [dcmread(p) for p in (data_dir / "results" / study).glob("*.dcm")]
            algorithm = _texts(sr)
            assert algorithm["Algorithm Name"] == "MedImageInsight adapter families"
            assert algorithm["Algorithm Version"] == f"v1 on MedImageInsight {model_version}"

            # an adapter of another model version, newest: refused at load, naming both
            adapter = json.loads((data_dir / "adapters/families/v1.json").read_text())
            adapter |= {"version": 2, "model_version": "2.0"}
            (data_dir / "adapters/families/v2.json").write_text(json.dumps(adapter))
            late = _studies(tmp_path / "late", 2000, 1)
            send_with_storescu(gw.port, late["disc"])
            failed = wait_for("the refusal", lambda: gw.events("job_failed"))
            assert "adapter families v2 was trained on MedImageInsight 2.0" in failed[0]["error"]
            assert (
                f"these embeddings are from MedImageInsight {model_version}" in failed[0]["error"]
            )
