"""A two-sample test for embedding drift: MMD with an RBF kernel on a random projection.

Maximum Mean Discrepancy (Gretton, Borgwardt, Rasch, Schölkopf, Smola, "A Kernel Two-Sample
Test", JMLR 13:723-773, 2012) measures the distance between two samples' mean embeddings in a
kernel's feature space; with a characteristic kernel such as the Gaussian RBF it is zero only
when the distributions are equal. The unbiased estimate MMD²_u (their eq. 3) is used, the
kernel bandwidth is the median pairwise distance of the pooled sample (their section 8), and
the p-value is the share of label permutations of the pooled sample whose statistic is at least
the observed one (a permutation test, exact in level whatever the sample sizes).

Before the test, the 1024-value MedImageInsight embeddings go through a fixed Gaussian random
projection to a few dozen dimensions: Rabanser, Günnemann, Lipton, "Failing Loudly: An Empirical
Study of Methods for Detecting Dataset Shift" (NeurIPS 2019) found an untrained random
projection followed by MMD among the most reliable shift detectors, and it keeps the test cheap
enough to run on every new study. The projection is seeded, so every process projects alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float64]


def projection(dim_in: int, dim_out: int, seed: int = 14) -> Matrix:
    """A fixed Gaussian random projection (dim_in x dim_out), scaled to keep distances."""
    rng = np.random.default_rng(seed)
    matrix: Matrix = rng.standard_normal((dim_in, dim_out)) / np.sqrt(dim_out)
    return matrix


@dataclass(frozen=True)
class MmdResult:
    """The observed MMD²_u and its permutation p-value."""

    statistic: float
    p_value: float


def _mmd2(kernel: Matrix, first: npt.NDArray[np.bool_]) -> float:
    """Unbiased MMD² from the pooled kernel matrix, ``first`` marking the first sample."""
    x, y = first, ~first
    m, n = int(x.sum()), int(y.sum())
    kxx = kernel[np.ix_(x, x)]
    kyy = kernel[np.ix_(y, y)]
    kxy = kernel[np.ix_(x, y)]
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def mmd_test(
    reference: Matrix, window: Matrix, permutations: int = 200, seed: int = 0
) -> MmdResult:
    """MMD²_u of ``reference`` against ``window`` (rows are samples) and its p-value."""
    if len(reference) < 2 or len(window) < 2:
        raise ValueError("each sample needs at least two rows")
    pooled = np.vstack([reference, window]).astype(np.float64)
    squared = np.sum((pooled[:, None, :] - pooled[None, :, :]) ** 2, axis=-1)
    positive = squared[squared > 0]
    bandwidth = float(np.median(positive)) if positive.size else 1.0
    kernel = np.exp(-squared / bandwidth)
    first = np.zeros(len(pooled), dtype=bool)
    first[: len(reference)] = True
    observed = _mmd2(kernel, first)
    rng = np.random.default_rng(seed)
    at_least = sum(_mmd2(kernel, rng.permutation(first)) >= observed for _ in range(permutations))
    return MmdResult(observed, (at_least + 1) / (permutations + 1))
