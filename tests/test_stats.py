"""Significance (reporting/stats.py): the paired permutation test is calibrated per query and finds a
real difference; the bootstrap interval is BCa."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.slow  # thousands of permutation tests
def test_paired_test_is_calibrated_per_query_and_pooling_seeds_is_not():
    from sbir_bench.reporting.stats import paired_permutation_test, query_means
    rng = np.random.default_rng(0)
    n_sims, n_queries, n_seeds = 400, 60, 3
    per_query, pooled = [], []
    for _ in range(n_sims):
        difficulty = rng.uniform(0, 1, n_queries)
        # equal methods: each has its own per-query idiosyncrasy, shared by its seeds (the null holds)
        a = [np.clip(difficulty + rng.normal(0, 0.1, n_queries)[None, :] + rng.normal(0, 0.02, (n_seeds, n_queries)), 0, 1)]
        b = [np.clip(difficulty + rng.normal(0, 0.1, n_queries)[None, :] + rng.normal(0, 0.02, (n_seeds, n_queries)), 0, 1)]
        qa = query_means((np.arange(n_queries), row) for row in a[0])
        qb = query_means((np.arange(n_queries), row) for row in b[0])
        per_query.append(paired_permutation_test(np.array(list(qa.values())), np.array(list(qb.values())), n_perm=499))
        pooled.append(paired_permutation_test(a[0].ravel(), b[0].ravel(), n_perm=499))
    share = np.mean(np.array(per_query) < 0.05)
    assert 0.03 <= share <= 0.07, share
    assert np.mean(np.array(pooled) < 0.05) > 0.10  # one query counted once per seed: far too many "findings"


def test_paired_test_finds_a_real_difference_and_bootstrap_is_bca():
    from sbir_bench.reporting.stats import bootstrap_ci, paired_permutation_test
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, 300)
    better = np.clip(base + rng.normal(0.03, 0.05, 300), 0, 1)
    assert paired_permutation_test(better, base, n_perm=2000) < 0.01
    lo, hi = bootstrap_ci(better, n_boot=999)
    assert lo < better.mean() < hi
    assert bootstrap_ci(np.full(10, 0.5)) == (0.5, 0.5)
