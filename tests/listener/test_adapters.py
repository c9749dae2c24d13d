"""Adapters: training on stored embeddings (``pacs-ai adapter``), the saved artefact, the
model-version check, and the ``model: adapter`` rule task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from listener.cli.common import EXIT_FAILED, EXIT_OK
from listener.cli.main import main
from listener.errors import ConfigError
from listener.infer.adapters import AdapterRegistry, AdapterVersionError
from listener.route.load import parse_rules
from listener.route.plan import plan_study
from listener.store.embeddings import EmbeddingStore

VERSION = "emulator-1.0"


def _clusters(data_dir: Path, per_class: int = 30, seed: int = 0) -> Path:
    """Two clusters of unit vectors stored as the embeddings of ``per_class`` studies each;
    the labels CSV naming them by study."""
    rng = np.random.default_rng(seed)
    centres = {"disc": rng.standard_normal(1024), "band": rng.standard_normal(1024)}
    store = EmbeddingStore(data_dir / "journal.sqlite")
    lines = ["study_instance_uid,label"]
    for label, centre in centres.items():
        for i in range(per_class):
            study = f"1.2.826.0.1.3680043.10.9.{label == 'disc'}.{i}"
            vector = centre + 3.0 * rng.standard_normal(1024)
            store.put(f"{study}.1", study, list(vector), VERSION, now=1.0)
            lines.append(f"{study},{label}")
    store.close()
    labels = data_dir / "labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    return labels


def test_train_reports_cross_validation_then_saves_a_versioned_adapter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``adapter train`` prints per-class accuracy, AUC and the confusion matrix, saves v1 with
    the training digest and the model version, and a second training saves v2."""
    labels = _clusters(tmp_path)
    argv = ["adapter", "train", "fam", "--labels", str(labels), "--data-dir", str(tmp_path)]
    assert main(argv) == EXIT_OK
    out = capsys.readouterr().out
    assert "cross-validation: 5 stratified folds, accuracy 1.000" in out
    assert "band\t30\t1.000\t1.000" in out
    assert "confusion matrix" in out and "disc\t0\t30" in out
    assert "saved adapter fam v1" in out
    adapter = AdapterRegistry(tmp_path / "adapters").load("fam")
    assert (adapter.version, adapter.samples, adapter.model_version) == (1, 60, VERSION)
    assert adapter.labels == ("band", "disc") and len(adapter.training_digest) == 64
    assert main(argv) == EXIT_OK
    capsys.readouterr()
    assert AdapterRegistry(tmp_path / "adapters").versions("fam") == [1, 2]
    assert main(["adapter", "list", "--data-dir", str(tmp_path)]) == EXIT_OK
    assert f"fam\tv2\t60\t1.000\t{VERSION}" in capsys.readouterr().out
    assert main(["adapter", "show", "fam", "--version", "1", "--data-dir", str(tmp_path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 1 and shown["training_digest"] == adapter.training_digest


def test_adapter_predicts_its_training_clusters(tmp_path: Path) -> None:
    """The saved weights, applied with numpy alone, give each cluster's vector its label."""
    labels = _clusters(tmp_path)
    argv = ["adapter", "train", "fam", "--labels", str(labels), "--data-dir", str(tmp_path)]
    assert main(argv) == EXIT_OK
    adapter = AdapterRegistry(tmp_path / "adapters").load("fam")
    store = EmbeddingStore(tmp_path / "journal.sqlite")
    rows = [line.split(",") for line in labels.read_text().splitlines()[1:]]
    vectors = store.by_version([uid for uid, _ in rows], study=True)
    for uid, label in rows:
        probabilities = adapter.probabilities(vectors[uid][VERSION], VERSION)
        assert adapter.labels[int(np.argmax(probabilities))] == label
        assert probabilities.sum() == pytest.approx(1.0)


def test_adapter_refuses_embeddings_of_another_model_version(tmp_path: Path) -> None:
    """An adapter trained on one MedImageInsight version refuses another, naming both."""
    labels = _clusters(tmp_path)
    argv = ["adapter", "train", "fam", "--labels", str(labels), "--data-dir", str(tmp_path)]
    assert main(argv) == EXIT_OK
    adapter = AdapterRegistry(tmp_path / "adapters").load("fam")
    with pytest.raises(AdapterVersionError) as caught:
        adapter.probabilities(np.ones(1024), "2.0")
    assert f"trained on MedImageInsight {VERSION}" in str(caught.value)
    assert "from MedImageInsight 2.0" in str(caught.value)


def test_training_without_embeddings_names_the_missing_uids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Labelled UIDs without a stored embedding stop the training (exit 1) and nothing is saved."""
    labels = _clusters(tmp_path, per_class=3)
    labels.write_text(labels.read_text() + "9.9.9,disc\n")
    argv = ["adapter", "train", "fam", "--labels", str(labels), "--data-dir", str(tmp_path)]
    assert main(argv) == EXIT_FAILED
    assert "1 labelled UIDs have no MedImageInsight" in capsys.readouterr().err
    assert AdapterRegistry(tmp_path / "adapters").names() == []


RULES = """
destinations:
  discs: {ae_title: DISCS, host: 127.0.0.1, port: 11112}
rules:
  - name: families
    match: {attribute: Modality, equals: CT}
    tasks:
      - {model: adapter, adapter: fam, routes: {disc: discs}}
"""


def test_adapter_task_is_planned_as_medimageinsight_naming_the_adapter() -> None:
    """A ``model: adapter`` task runs on the MedImageInsight client with the adapter's name."""
    plan = plan_study(parse_rules(RULES), [{"Modality": "CT", "SOPInstanceUID": "1.2.3"}])
    (task,) = plan.tasks
    assert task.model == "medimageinsight" and task.parameters["adapter"] == "fam"
    assert task.routes == {"disc": "discs"}


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("{model: adapter, routes: {disc: discs}}", "model: adapter and adapter: NAME"),
        ("{model: medimageinsight, adapter: fam, labels: [a]}", "model: adapter and adapter"),
        ("{model: adapter, adapter: fam, labels: [disc]}", "brings its own labels"),
        ("{model: adapter, adapter: fam, routes: {disc: disks}}", "unknown destination 'disks'"),
    ],
)
def test_adapter_task_mistakes_stop_loading(task: str, message: str) -> None:
    """An adapter task without its adapter, with labels, or routing to an unknown destination
    is refused when the rules load."""
    text = RULES.replace("{model: adapter, adapter: fam, routes: {disc: discs}}", task)
    with pytest.raises(ConfigError, match=message):
        parse_rules(text)


ACTION_RULES = """
destinations:
  review: {ae_title: REVIEW, host: 127.0.0.1, port: 11112}
  odd: {ae_title: ODD, host: 127.0.0.1, port: 11113}
rules:
  - name: triage
    match: {attribute: Modality, equals: CT}
    tasks:
      - model: medimageinsight
        labels: [normal, fracture]
        flag_for_review: {label: fracture, above: 0.7, forward_to: review, raise_priority: 5}
        ood: {above: 0.4, forward_to: odd}
"""


@pytest.mark.parametrize(
    ("typo", "field"),
    [
        ("forward_to: review,", "tasks[0].flag_for_review.forward_to"),
        ("forward_to: odd}", "tasks[0].ood.forward_to"),
    ],
)
def test_action_destination_typo_stops_loading_naming_rule_and_field(typo: str, field: str) -> None:
    """A misspelt review or OOD destination is refused when the rules load (so serve does not
    start), naming the rule and the field."""
    text = ACTION_RULES.replace(typo, typo.replace("forward_to: ", "forward_to: x"))
    with pytest.raises(ConfigError) as caught:
        parse_rules(text)
    assert f"rule 'triage' field {field}: unknown destination" in str(caught.value)


def test_legacy_ood_destination_parameter_is_checked_too() -> None:
    """The older ``parameters: {ood_destination: ...}`` is a destination reference as well."""
    text = ACTION_RULES.replace(
        "        ood: {above: 0.4, forward_to: odd}\n",
        "        parameters: {ood_threshold: 0.4, ood_destination: od}\n",
    )
    with pytest.raises(ConfigError) as caught:
        parse_rules(text)
    assert "rule 'triage' field tasks[0].parameters.ood_destination: unknown destination 'od'" in (
        str(caught.value)
    )


def test_actions_are_planned_into_the_job_parameters() -> None:
    """The review and OOD actions travel with the planned task; review decisions follow them."""
    from listener.infer.actions import ood_flag, review_flag

    (task,) = plan_study(parse_rules(ACTION_RULES), [{"Modality": "CT"}]).tasks
    assert review_flag(task, {"normal": 0.25, "fracture": 0.75}, "1.2", 5.0) is not None
    flag, priority = review_flag(task, {"normal": 0.25, "fracture": 0.75}, "1.2", 5.0) or (None, 0)
    assert flag is not None and (flag.destination, priority) == ("review", 5)
    assert review_flag(task, {"normal": 0.35, "fracture": 0.65}, "1.2", 5.0) is None
    odd = ood_flag(task, 0.5, "1.2", 5.0)
    assert odd is not None and odd.destination == "odd"
    assert ood_flag(task, 0.3, "1.2", 5.0) is None


def test_review_label_must_be_one_of_the_labels() -> None:
    """flag_for_review.label names a label the task classifies with."""
    with pytest.raises(ConfigError, match=r"flag_for_review\.label 'fractur' is not in labels"):
        parse_rules(ACTION_RULES.replace("label: fracture", "label: fractur"))
