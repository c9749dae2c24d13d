"""Adapters: small classifiers trained on a site's own MedImageInsight embeddings.

The model card of MedImageInsight names adapters (a light classifier on the frozen embeddings,
trained for a site's own task) as one of its uses. An adapter here is a multinomial (or, for two
labels, binary) logistic regression, trained by ``pacs-ai adapter train``
(:mod:`listener.infer.adapter_training`, scikit-learn) and saved as plain JSON: its weights, the
labels, and what it was trained on. JSON rather than a pickle: loading an adapter runs no code,
and the gateway predicts with numpy alone.

An artefact is versioned: ``<data_dir>/adapters/<name>/v<N>.json``, N counting up from 1 with
each training; the newest version is the one rules use. It records the training set's digest
(the SHA-256 of its sorted UID, label and vector bytes), the date, the cross-validated metrics,
and the MedImageInsight model version whose embeddings it learnt from. Embeddings of another
model version live in another vector space, so :meth:`Adapter.check_version` refuses them,
naming both versions.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from listener.errors import ConversionError

_VERSION_FILE = re.compile(r"^v(\d+)\.json$")


class AdapterVersionError(ConversionError):
    """An adapter was asked to classify embeddings of a model version it was not trained on."""


@dataclass(frozen=True)
class Adapter:
    """One saved adapter version: logistic-regression weights and their provenance."""

    name: str
    version: int
    labels: tuple[str, ...]
    coef: tuple[tuple[float, ...], ...]  # (1, dim) for two labels, (labels, dim) otherwise
    intercept: tuple[float, ...]
    model_version: str  # the MedImageInsight version of the training embeddings
    training_digest: str
    trained_at: str  # ISO 8601 with offset
    samples: int
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def algorithm_name(self) -> str:
        """How results name it (TID 4019 Algorithm Name): the adapter on top of the model."""
        return f"MedImageInsight adapter {self.name}"

    @property
    def algorithm_version(self) -> str:
        """TID 4019 Algorithm Version: the adapter version and the embedding model's version."""
        return f"v{self.version} on MedImageInsight {self.model_version}"

    def check_version(self, model_version: str) -> None:
        """Refuse embeddings of another model version than the training set's."""
        if model_version != self.model_version:
            raise AdapterVersionError(
                f"adapter {self.name} v{self.version} was trained on MedImageInsight"
                f" {self.model_version}; these embeddings are from MedImageInsight {model_version}"
            )

    def probabilities(
        self, vector: npt.NDArray[np.floating], model_version: str
    ) -> npt.NDArray[np.float64]:
        """The probability of each label for one embedding (same order as :attr:`labels`)."""
        self.check_version(model_version)
        weights = np.asarray(self.coef, dtype=np.float64)
        x = np.asarray(vector, dtype=np.float64).ravel()
        if x.shape[0] != weights.shape[1]:
            raise ConversionError(
                f"adapter {self.name}: an embedding of {x.shape[0]} values, expected"
                f" {weights.shape[1]}"
            )
        scores = weights @ x + np.asarray(self.intercept, dtype=np.float64)
        if len(self.labels) == 2:  # scikit-learn's binary form: one row, for labels[1]
            positive = 1.0 / (1.0 + np.exp(-scores[0]))
            return np.array([1.0 - positive, positive])
        scores -= scores.max()
        exp = np.exp(scores)
        result: npt.NDArray[np.float64] = exp / exp.sum()
        return result

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Adapter:
        data = json.loads(text)
        return cls(
            name=data["name"],
            version=int(data["version"]),
            labels=tuple(data["labels"]),
            coef=tuple(tuple(float(v) for v in row) for row in data["coef"]),
            intercept=tuple(float(v) for v in data["intercept"]),
            model_version=data["model_version"],
            training_digest=data["training_digest"],
            trained_at=data["trained_at"],
            samples=int(data["samples"]),
            metrics=dict(data.get("metrics", {})),
        )


class AdapterRegistry:
    """The adapters folder: ``<name>/v<N>.json`` per saved version."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def versions(self, name: str) -> list[int]:
        """The saved versions of ``name``, oldest first."""
        folder = self.folder / name
        if not folder.is_dir():
            return []
        found = (_VERSION_FILE.match(p.name) for p in folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if p.is_dir() and self.versions(p.name))

    def load(self, name: str, version: int | None = None) -> Adapter:
        """The adapter ``name`` at ``version`` (default: the newest); KeyError when absent."""
        versions = self.versions(name)
        if not versions or (version is not None and version not in versions):
            raise KeyError(f"{name} v{version}" if version is not None else name)
        chosen = version if version is not None else versions[-1]
        return Adapter.from_json((self.folder / name / f"v{chosen}.json").read_text())

    def next_version(self, name: str) -> int:
        versions = self.versions(name)
        return versions[-1] + 1 if versions else 1

    def save(self, adapter: Adapter) -> Path:
        """Write ``adapter`` (temp file and rename: a reader never sees half of it)."""
        path = self.folder / adapter.name / f"v{adapter.version}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_text(adapter.to_json())
        temp.replace(path)
        return path
