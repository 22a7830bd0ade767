"""Statistics over queries: bootstrap confidence intervals and paired tests between two methods.

SBIR papers report a mean over thousands of queries with no uncertainty. Every run saves its
per-query values, so sbir-bench can say how precise a number is and whether a difference between
two methods on the *same* queries is more than noise.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (queries resampled with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 256):  # blocks keep memory at 256 x n whatever the query count
        stop = min(n_boot, start + 256)
        idx = rng.integers(0, len(values), size=(stop - start, len(values)))
        means[start:stop] = values[idx].mean(1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def paired_permutation_test(a: np.ndarray, b: np.ndarray, n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value that methods a and b have the same mean on the same queries.

    Sign-flip permutation test on the per-query differences (exchangeable under the null that the
    labels "a" and "b" are arbitrary for each query); p = (#|permuted mean| >= |observed| + 1) / (n + 1).
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.shape != np.asarray(b).shape or diff.ndim != 1:
        raise ValueError("paired test needs two 1-D arrays over the same queries")
    if len(diff) == 0 or not np.any(diff):
        return 1.0
    observed = abs(diff.mean())
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_perm, 256):
        stop = min(n_perm, start + 256)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(stop - start, len(diff)))
        hits += int((np.abs((signs * diff).mean(1)) >= observed - 1e-15).sum())
    return (hits + 1) / (n_perm + 1)
