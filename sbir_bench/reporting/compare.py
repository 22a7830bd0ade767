"""Build the comparison table: methods x (dataset, split, setting, metric), mean +- std over seeds.

The result is a *long* table, one row per cell (``row, dataset, split, setting, metric, mean, std,
n, ci_lo, ci_hi, p, delta, reference``), which :mod:`.render` pivots into text, LaTeX, Markdown or
CSV. Optional extras: published reference numbers (``results/paper/*.csv``) with the delta of each
method against its own published value, 95% bootstrap CIs over queries, and the p-value of a paired
permutation test of every method against one chosen method on the same queries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from ..errors import SbirError
from .collect import metric_names, per_query_values
from .stats import bootstrap_ci, paired_permutation_test

CELL_COLUMNS = ["row", "dataset", "split", "setting", "metric", "mean", "std", "n", "ci_lo", "ci_hi", "p", "delta",
                "reference"]
PAPER_COLUMNS = ("method", "dataset", "split", "setting", "metric", "value", "source", "table")


def row_label(method: str, variant: str) -> str:
    return f"{method} [{variant}]" if variant else method


def load_reference(folder: str | Path) -> pd.DataFrame:
    """Published numbers: every CSV in ``folder`` with columns method, dataset, split, setting, metric,
    value (fraction in [0, 1]), source, table."""
    files = sorted(Path(folder).glob("*.csv"))
    if not files:
        raise SbirError(f"no reference CSV files in {folder}")
    frames = []
    for f in files:
        frame = pd.read_csv(f, comment="#", dtype={"split": str})
        missing = [c for c in PAPER_COLUMNS if c not in frame.columns]
        if missing:
            raise SbirError(f"{f}: missing column(s) {', '.join(missing)}")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _pooled_per_query(runs: pd.DataFrame, metric: str) -> Optional[Dict[tuple, np.ndarray]]:
    """{(seed, query position): value} of ``metric`` for these runs, or None if any run lacks them."""
    out: Dict[tuple, np.ndarray] = {}
    for seed, path in zip(runs["seed"], runs["per_query"]):
        loaded = per_query_values(path, metric)
        if loaded is None:
            return None
        for q, v in zip(*loaded):
            out[(seed, int(q))] = v
    return out


def _query_means(pooled: Dict[tuple, np.ndarray]) -> np.ndarray:
    """Average each query over seeds (seeds share the test queries), in query order."""
    by_query: Dict[int, List[float]] = {}
    for (_, q), v in pooled.items():
        by_query.setdefault(q, []).append(float(v))
    return np.array([np.mean(by_query[q]) for q in sorted(by_query)])


def compare(frame: pd.DataFrame, reference: Optional[pd.DataFrame] = None, against: Optional[str] = None,
            ci: bool = False, n_boot: int = 2000, n_perm: int = 10000) -> pd.DataFrame:
    """The long comparison table of ``frame`` (from :func:`~.collect.runs_frame`)."""
    if frame.empty:
        raise SbirError("no run records to compare")
    cells = []
    metrics = metric_names(frame)
    if against is not None and against not in set(frame["method"]):
        raise SbirError(f"--against {against}: no runs of that method among {', '.join(sorted(set(frame['method'])))}")
    for (method, variant, dataset, split, setting), runs in frame.groupby(
            ["method", "variant", "dataset", "split", "setting"], sort=True):
        for metric in metrics:
            values = runs[f"metric:{metric}"].dropna()
            if values.empty:
                continue
            cell = {"row": row_label(method, variant), "dataset": dataset, "split": split, "setting": setting,
                    "metric": metric, "mean": float(values.mean()), "n": int(len(values)), "reference": False,
                    "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                    "ci_lo": np.nan, "ci_hi": np.nan, "p": np.nan, "delta": np.nan}
            pooled = _pooled_per_query(runs, metric) if (ci or against) else None
            if ci and pooled:
                cell["ci_lo"], cell["ci_hi"] = bootstrap_ci(_query_means(pooled), n_boot)
            if against and pooled and method != against:
                cell["p"] = _paired_p(frame, against, dataset, split, setting, metric, pooled, n_perm)
            if reference is not None:
                cell["delta"] = _delta(reference, method, dataset, split, setting, metric, cell["mean"])
            cells.append(cell)
    if reference is not None:
        cells += _reference_cells(reference, frame)
    return pd.DataFrame(cells, columns=CELL_COLUMNS)


def _paired_p(frame, against, dataset, split, setting, metric, pooled, n_perm) -> float:
    base = frame[(frame["method"] == against) & (frame["dataset"] == dataset) & (frame["split"] == split)
                 & (frame["setting"] == setting)]
    other = _pooled_per_query(base, metric) if not base.empty else None
    if not other:
        return np.nan
    shared = sorted(set(pooled) & set(other))  # same seed and query: the same test items
    if not shared:
        return np.nan
    return paired_permutation_test(np.array([pooled[k] for k in shared]), np.array([other[k] for k in shared]), n_perm)


def _matching(reference: pd.DataFrame, dataset, split, setting, metric) -> pd.DataFrame:
    return reference[(reference["dataset"] == dataset) & (reference["split"].astype(str) == str(split))
                     & (reference["setting"] == setting) & (reference["metric"] == metric)]


def _delta(reference, method, dataset, split, setting, metric, mean) -> float:
    hit = _matching(reference, dataset, split, setting, metric)
    hit = hit[hit["method"] == method]
    return float(mean - hit["value"].iloc[0]) if len(hit) else np.nan


def _reference_cells(reference: pd.DataFrame, frame: pd.DataFrame) -> List[dict]:
    """Published values for the (dataset, split, setting) blocks that our runs cover."""
    blocks = set(zip(frame["dataset"], frame["split"], frame["setting"]))
    out = []
    for _, r in reference.iterrows():
        if (r["dataset"], str(r["split"]), r["setting"]) in blocks:
            out.append({"row": f"{r['method']} (paper)", "dataset": r["dataset"], "split": str(r["split"]),
                        "setting": r["setting"], "metric": r["metric"], "mean": float(r["value"]), "std": np.nan,
                        "n": 0, "ci_lo": np.nan, "ci_hi": np.nan, "p": np.nan, "delta": np.nan, "reference": True})
    return out
