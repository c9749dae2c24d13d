"""Train an adapter (:mod:`listener.infer.adapters`) on stored embeddings, with scikit-learn.

Logistic regression on L2-normalised MedImageInsight embeddings is the linear probe that the
model's authors evaluate (Codella et al., "MedImageInsight: An Open-Source Embedding Model for
General Domain Medical Imaging", arXiv:2410.06542, 2024). Class weights are ``balanced``
(inversely proportional to class frequency), so a rare label is not drowned by a common one.

Before anything is saved, stratified k-fold cross-validation (k = 5, or the smallest class size
when that is smaller, at least 2) predicts every training sample from a model that did not see
it; the report gives per-class accuracy (recall), one-vs-rest ROC AUC, the confusion matrix and
the overall accuracy. The final adapter is then fitted on all samples.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from listener.infer.adapters import Adapter

MAX_FOLDS = 5
UID_COLUMNS = ("study_instance_uid", "sop_instance_uid")


class TrainingError(ValueError):
    """The labels file or the embeddings cannot make an adapter; the message says why."""


@dataclass(frozen=True)
class LabelledSet:
    """Training samples: one embedding per labelled UID, all of one model version."""

    uids: tuple[str, ...]
    labels: tuple[str, ...]
    vectors: npt.NDArray[np.float32]
    model_version: str

    def digest(self) -> str:
        """SHA-256 over the sorted (UID, label, vector bytes): same set, same digest."""
        sha = hashlib.sha256()
        for i in sorted(range(len(self.uids)), key=lambda i: self.uids[i]):
            sha.update(f"{self.uids[i]}\t{self.labels[i]}\n".encode())
            sha.update(np.ascontiguousarray(self.vectors[i], dtype=np.float32).tobytes())
        return sha.hexdigest()


def read_labels(path: Path) -> tuple[str, list[tuple[str, str]]]:
    """The UID column used (study or SOP instance) and the (UID, label) rows of a CSV file."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or ()]
        column = next((c for c in UID_COLUMNS if c in columns), None)
        if column is None or "label" not in columns:
            raise TrainingError(
                f"{path}: needs a label column and one of {', '.join(UID_COLUMNS)}"
                f" (found: {', '.join(columns) or 'nothing'})"
            )
        rows = [
            ((row.get(column) or "").strip(), (row.get("label") or "").strip()) for row in reader
        ]
    rows = [(uid, label) for uid, label in rows if uid and label]
    if not rows:
        raise TrainingError(f"{path}: no labelled rows")
    return column, rows


def labelled_set(
    rows: Sequence[tuple[str, str]],
    vectors_of: Mapping[str, Mapping[str, npt.NDArray[np.float32]]],
    model_version: str | None = None,
) -> LabelledSet:
    """Pair each labelled UID with its embedding of one model version.

    ``vectors_of`` maps a UID to its embeddings by model version. Without ``model_version`` the
    version that covers most rows is used; rows without an embedding of it are an error, naming
    how many and the first few.
    """
    if model_version is None:
        counts = Counter(v for uid, _ in rows for v in vectors_of.get(uid, {}))
        if not counts:
            raise TrainingError("none of the labelled UIDs has a stored embedding")
        model_version = counts.most_common(1)[0][0]
    missing = [uid for uid, _ in rows if model_version not in vectors_of.get(uid, {})]
    if missing:
        raise TrainingError(
            f"{len(missing)} labelled UIDs have no MedImageInsight {model_version} embedding"
            f" (first: {', '.join(missing[:3])})"
        )
    return LabelledSet(
        uids=tuple(uid for uid, _ in rows),
        labels=tuple(label for _, label in rows),
        vectors=np.stack([vectors_of[uid][model_version] for uid, _ in rows]),
        model_version=model_version,
    )


def cross_validate(data: LabelledSet, seed: int = 0) -> dict[str, Any]:
    """Stratified k-fold predictions of every sample: per-class and overall metrics."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import confusion_matrix, roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    labels = sorted(set(data.labels))
    counts = Counter(data.labels)
    if len(labels) < 2:
        raise TrainingError(f"an adapter needs at least two labels (found: {', '.join(labels)})")
    folds = min(MAX_FOLDS, min(counts.values()))
    if folds < 2:
        rare = sorted(label for label, n in counts.items() if n < 2)
        raise TrainingError(f"each label needs at least two samples (too few: {', '.join(rare)})")
    y = np.array(data.labels)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probabilities = cross_val_predict(
        _classifier(LogisticRegression), data.vectors, y, cv=splitter, method="predict_proba"
    )
    predicted = np.array(labels)[np.argmax(probabilities, axis=1)]
    matrix = confusion_matrix(y, predicted, labels=labels)
    per_class = {}
    for i, label in enumerate(labels):
        truth = y == label
        per_class[label] = {
            "samples": int(truth.sum()),
            "accuracy": float((predicted[truth] == label).mean()),
            "auc": float(roc_auc_score(truth, probabilities[:, i])),
        }
    return {
        "folds": folds,
        "accuracy": float((predicted == y).mean()),
        "per_class": per_class,
        "labels": labels,
        "confusion_matrix": matrix.tolist(),
    }


def _classifier(kind: Any) -> Any:
    return kind(class_weight="balanced", max_iter=2000, C=1.0)


def train(data: LabelledSet, name: str, version: int, now: datetime) -> Adapter:
    """Cross-validate, then fit on every sample: the adapter, metrics included (not saved)."""
    from sklearn.linear_model import LogisticRegression

    metrics = cross_validate(data)
    model = _classifier(LogisticRegression).fit(data.vectors, np.array(data.labels))
    return Adapter(
        name=name,
        version=version,
        labels=tuple(str(c) for c in model.classes_),
        coef=tuple(tuple(float(v) for v in row) for row in model.coef_),
        intercept=tuple(float(v) for v in model.intercept_),
        model_version=data.model_version,
        training_digest=data.digest(),
        trained_at=now.isoformat(timespec="seconds"),
        samples=len(data.uids),
        metrics=metrics,
    )


def metrics_report(metrics: Mapping[str, Any]) -> list[str]:
    """The cross-validation metrics as printable lines (per class, then the confusion matrix)."""
    lines = [
        f"cross-validation: {metrics['folds']} stratified folds,"
        f" accuracy {metrics['accuracy']:.3f}",
        "LABEL\tSAMPLES\tACCURACY\tAUC",
    ]
    for label, row in metrics["per_class"].items():
        lines.append(f"{label}\t{row['samples']}\t{row['accuracy']:.3f}\t{row['auc']:.3f}")
    labels = metrics["labels"]
    lines.append("confusion matrix (rows: true, columns: predicted)")
    lines.append("\t" + "\t".join(labels))
    for label, row in zip(labels, metrics["confusion_matrix"], strict=True):
        lines.append(label + "\t" + "\t".join(str(n) for n in row))
    return lines
