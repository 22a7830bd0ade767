"""Statistics over queries: bootstrap confidence intervals and paired tests between two methods.

SBIR papers report a mean over thousands of queries with no uncertainty. Every run saves its
per-query values, so sbir-bench can say how precise a number is and whether a difference between
two methods on the *same* queries is more than noise.

The unit of both statistics is the test query. With several seeds, each query's value is first
averaged over the seeds (:func:`query_means`): the seeds share the test queries, so counting one
query once per seed would treat correlated values as independent and make intervals too narrow
and p-values too small. Both computations are scipy's (``scipy.stats.bootstrap`` with BCa
intervals, ``scipy.stats.permutation_test`` with paired sign flips); BCa's jackknife costs
O(n^2), so above :data:`BCA_MAX_QUERIES` queries the percentile interval is used (at that size
the two agree to the third decimal for a mean), and the method is reported with the interval.
"""

from __future__ import annotations

import warnings
from typing import Dict, Iterable, Tuple

import numpy as np
from scipy import stats

BCA_MAX_QUERIES = 5000
BATCH = 256  # resamples evaluated at once: memory stays at BATCH x n whatever the query count


def query_means(per_seed: Iterable[Tuple[np.ndarray, np.ndarray]]) -> Dict[int, float]:
    """{query position: value averaged over the seeds that evaluated it} from (positions, values) pairs.

    >>> query_means([(np.array([0, 1]), np.array([1.0, 0.0])), (np.array([0, 1]), np.array([0.0, 0.0]))])
    {0: 0.5, 1: 0.0}
    """
    sums: Dict[int, float] = {}
    counts: Dict[int, int] = {}
    for positions, values in per_seed:
        for q, v in zip(np.asarray(positions).tolist(), np.asarray(values, dtype=np.float64).tolist()):
            sums[q] = sums.get(q, 0.0) + v
            counts[q] = counts.get(q, 0) + 1
    return {q: sums[q] / counts[q] for q in sorted(sums)}


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Tuple[float, float]:
    """Bootstrap CI of the mean of ``values`` (queries resampled with replacement): BCa, or percentile
    above :data:`BCA_MAX_QUERIES` values; a constant sample gives the degenerate interval (v, v)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    method = "BCa" if len(values) <= BCA_MAX_QUERIES else "percentile"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=stats.DegenerateDataWarning)
        res = stats.bootstrap((values,), np.mean, n_resamples=n_boot, confidence_level=level, method=method,
                              vectorized=True, batch=BATCH, random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a - b, axis=axis)


def paired_permutation_test(a: np.ndarray, b: np.ndarray, n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value that methods a and b have the same mean on the same queries.

    Paired sign-flip permutation test of the mean difference (``scipy.stats.permutation_test`` with
    ``permutation_type="samples"``); p = (#|permuted| >= |observed| + 1) / (n_perm + 1).

    >>> paired_permutation_test(np.ones(50), np.zeros(50), n_perm=999) < 0.01
    True
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("paired test needs two 1-D arrays over the same queries")
    if len(a) == 0 or not np.any(a - b):
        return 1.0
    res = stats.permutation_test((a, b), _mean_difference, permutation_type="samples", alternative="two-sided",
                                 n_resamples=n_perm, vectorized=True, batch=BATCH, random_state=np.random.default_rng(seed))
    return float(res.pvalue)
