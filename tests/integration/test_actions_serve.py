"""Actions on model output through ``pacs-ai serve``: a flag-for-review
action and an OOD action forward their studies to their destinations (DCMTK storescp), with the
flags and the OOD score kept for the API and the dashboard."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from factory import family_study
from peers import (
    StoreSCP,
    embedding_count,
    free_port,
    nodelay_env,
    run_gateway,
    run_storescp,
    wait_for,
    written_uids,
)

from listener.store.flags import StudyFlags

pytestmark = pytest.mark.integration

TRAINING = 10  # per family


def _send(port: int, datasets: list, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    subprocess.run(
        ["storescu", "-aet", "MODALITY", "-aec", "PACSAI", "127.0.0.1", str(port)]
        + [str(p) for p in paths],
        check=True,
        env=nodelay_env(),
        timeout=300,
    )
    return paths


def _received(scp: StoreSCP) -> set[str]:
    return written_uids(scp.folder, "StudyInstanceUID")


def _rules(review: int, odd: int) -> str:
    return (
        "destinations:\n"
        f"  review: {{ae_title: REVIEW, host: 127.0.0.1, port: {review}}}\n"
        f"  odd: {{ae_title: ODD, host: 127.0.0.1, port: {odd}}}\n"
        "rules:\n"
        "  - name: families\n"
        "    match: {attribute: Modality, equals: CT}\n"
        "    tasks:\n"
        "      - model: adapter\n"
        "        adapter: families\n"
        "        flag_for_review:\n"
        "          {label: disc, above: 0.8, forward_to: review, raise_priority: 5}\n"
        "        ood: {above: 0.6, forward_to: odd}\n"
    )


def test_review_and_ood_actions_reach_their_destinations(tmp_path: Path) -> None:
    """A new disc study (adapter probability of disc above 0.8) reaches the review storescp and
    not the OOD one; a study of an unseen family (OOD score above 0.6) reaches the OOD one; both
    flags and the OOD scores are kept."""
    data_dir = tmp_path / "var"
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: embed\n    match: {attribute: Modality, equals: CT}\n"
        "    tasks: [{model: medimageinsight, labels: [a disc, a band]}]\n"
    )
    env = {"PACSAI_RULES_FILE": str(rules)}
    training = [family_study(f, i) for f in ("disc", "band") for i in range(TRAINING)]
    with run_gateway(data_dir, "--quiet-period", "1", env=env) as gateway:
        _send(gateway.port, training, tmp_path / "training")
        wait_for("the embeddings", lambda: embedding_count(gateway) >= len(training))
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "study_instance_uid,label\n"
        + "".join(
            f"{ds.StudyInstanceUID},{(i // TRAINING and 'band') or 'disc'}\n"
            for i, ds in enumerate(training)
        )
    )
    train = ["adapter", "train", "families", "--labels", str(labels), "--data-dir", str(data_dir)]
    trained = subprocess.run(
        [sys.executable, "-m", "listener.cli", *train],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert trained.returncode == 0, trained.stderr

    disc, corner = family_study("disc", 500), family_study("corner", 500)
    with (
        run_storescp(tmp_path / "review", "REVIEW") as review,
        run_storescp(tmp_path / "odd", "ODD") as odd,
    ):
        rules.write_text(_rules(review.port, odd.port))
        with run_gateway(data_dir, "--quiet-period", "1", env=env, log_name="act.log") as gw:
            _send(gw.port, [disc, corner], tmp_path / "new")
            wait_for("the review forward", lambda: str(disc.StudyInstanceUID) in _received(review))
            wait_for("the OOD forward", lambda: _received(odd) == {str(corner.StudyInstanceUID)})
            flags = StudyFlags(data_dir / "journal.sqlite")
            try:
                (flag,) = [f for f in flags.flags(str(disc.StudyInstanceUID))]
                assert (flag.kind, flag.destination) == ("review", "review")
                assert flag.reason.startswith("disc: probability")
                odd_flags = [
                    f for f in flags.flags(str(corner.StudyInstanceUID)) if f.kind == "ood"
                ]
                assert odd_flags and odd_flags[0].destination == "odd"
                corner_score = flags.ood(str(corner.StudyInstanceUID))
                disc_score = flags.ood(str(disc.StudyInstanceUID))
                assert corner_score is not None and corner_score > 0.6
                assert disc_score is not None and disc_score < 0.6
            finally:
                flags.close()


@pytest.mark.parametrize(
    ("action", "field"),
    [
        ("flag_for_review: {above: 0.8, forward_to: reveiw}", "flag_for_review.forward_to"),
        ("ood: {above: 0.6, forward_to: od}", "ood.forward_to"),
    ],
)
def test_action_destination_typo_stops_serve_naming_rule_and_field(
    tmp_path: Path, action: str, field: str
) -> None:
    """``pacs-ai serve`` with a misspelt review or OOD destination exits at start-up, naming
    the rule and the field."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "destinations:\n"
        "  review: {ae_title: REVIEW, host: 127.0.0.1, port: 11112}\n"
        "  odd: {ae_title: ODD, host: 127.0.0.1, port: 11113}\n"
        "rules:\n  - name: triage\n    match: {attribute: Modality, equals: CT}\n"
        f"    tasks: [{{model: medimageinsight, labels: [a, b], {action}}}]\n"
    )
    serve = ["serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "var")]
    done = subprocess.run(
        [sys.executable, "-m", "listener.cli", *serve],
        capture_output=True,
        text=True,
        timeout=120,
        env=nodelay_env(PACSAI_RULES_FILE=str(rules), PACSAI_ADMIN_PORT="0"),
    )
    assert done.returncode != 0
    assert f"rule 'triage' field tasks[0].{field}: unknown destination" in done.stderr + done.stdout
