"""Build the comparison table: rows x (dataset, split, setting, metric), mean +- std over seeds.

The result is a *long* table, one row per cell (:data:`CELL_COLUMNS`), which :mod:`.render` pivots
into text, LaTeX, Markdown or CSV. Optional extras:

* published numbers (``results/paper/*.csv``, see results/paper/README.md) as extra rows, and a delta
  of each of our cells against the published number of the same method, else of ``delta_vs``
  (SpLIP). The delta uses our value under the published column's evaluation protocol when its
  source code is known (runs store their metrics under every preset); otherwise it is marked
  "protocol unknown";
* 95% bootstrap CIs over queries and p-values of a paired permutation test of every row against
  one chosen method, with each query averaged over seeds first (:mod:`.stats`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from ..errors import DataError
from ..log import get_logger
from ..retrieval.npz_files import per_query_values
from .collect import metric_names
from .stats import bootstrap_ci, paired_permutation_test, query_means

log = get_logger(__name__)

CELL_COLUMNS = ["row", "dataset", "split", "setting", "metric", "mean", "std", "n", "ci_lo", "ci_hi", "p", "delta",
                "delta_note", "reference", "order", "bibkey"]
PAPER_COLUMNS = ("method", "dataset", "split", "setting", "metric", "value")
OPTIONAL_PAPER_COLUMNS = ("venue", "family", "bibkey", "protocol", "table", "source")
DELTA_VS = "SpLIP"
UNKNOWN = "protocol unknown"


def load_reference(folder: str | Path) -> pd.DataFrame:
    """Published numbers: every CSV in ``folder`` (columns in results/paper/README.md; ``value`` is a
    fraction in [0, 1]); each row keeps its file order, which is the paper's row order."""
    files = sorted(Path(folder).glob("*.csv"))
    if not files:
        raise DataError(f"no reference CSV files in {folder}")
    frames = []
    for f in files:
        try:
            frame = pd.read_csv(f, comment="#", dtype={"split": str}, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise DataError(f"{f} is not a readable CSV ({type(exc).__name__})") from None
        missing = [c for c in PAPER_COLUMNS if c not in frame.columns]
        if missing:
            raise DataError(f"{f}: missing column(s) {', '.join(missing)}")
        frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
        if frame["value"].isna().any() or ((frame["value"] < 0) | (frame["value"] > 1)).any():
            raise DataError(f"{f}: every value must be a number in [0, 1] (a table's 72.3 is 0.723)")
        for column in OPTIONAL_PAPER_COLUMNS:
            frame[column] = frame[column].astype(str) if column in frame.columns else ""
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out["order"] = np.arange(len(out))
    return out


def _seed_query_means(runs: pd.DataFrame, metric: str) -> Optional[Dict[int, float]]:
    """{query: value averaged over this row's seeds}, or None (with a warning) if a run lacks them."""
    if "/" in metric:  # seen / unseen / H are aggregates of subsets: no per-query statistics
        return None
    loaded = []
    for path, record in zip(runs["per_query"], runs["record"]):
        values = per_query_values(path, metric)
        if values is None:
            log.warning(f"no per-query {metric} for {record} ({path or 'per_query.npz not saved'}): "
                        f"its CIs and p-values are left blank")
            return None
        loaded.append(values)
    return query_means(loaded)


def _cell(label: str, block: tuple, metric: str, values: pd.Series) -> dict:
    dataset, split, setting = block
    return {"row": label, "dataset": dataset, "split": split, "setting": setting, "metric": metric,
            "mean": float(values.mean()), "n": int(len(values)), "reference": False, "order": -1, "bibkey": "",
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "ci_lo": np.nan, "ci_hi": np.nan, "p": np.nan, "delta": np.nan, "delta_note": ""}


def compare(frame: pd.DataFrame, reference: Optional[pd.DataFrame] = None, against: Optional[str] = None,
            ci: bool = False, n_boot: int = 2000, n_perm: int = 10000, delta_vs: str = DELTA_VS,
            all_reference_blocks: bool = False) -> pd.DataFrame:
    """The long comparison table of ``frame`` (from :func:`~.collect.runs_frame`)."""
    if frame.empty:
        raise DataError("no run records to compare")
    if against is not None and against not in set(frame["method"]):
        raise DataError(f"--against {against}: no runs of that method among {', '.join(sorted(set(frame['method'])))}")
    cells = []
    metrics = metric_names(frame)
    for (label, dataset, split, setting), runs in frame.groupby(["row", "dataset", "split", "setting"], sort=True):
        block = (dataset, split, setting)
        for metric in metrics:
            values = runs[f"metric:{metric}"].dropna()
            if values.empty:
                continue
            cell = _cell(label, block, metric, values)
            per_query = _seed_query_means(runs, metric) if (ci or against) else None
            if ci and per_query:
                cell["ci_lo"], cell["ci_hi"] = bootstrap_ci(np.array(list(per_query.values())), n_boot)
            if against and per_query and runs["method"].iloc[0] != against:
                cell["p"] = _paired_p(frame, against, block, metric, per_query, n_perm)
            if reference is not None:
                cell["delta"], cell["delta_note"] = _delta(reference, runs, block, metric, delta_vs)
            cells.append(cell)
    if reference is not None:
        cells += _reference_cells(reference, frame, all_reference_blocks)
    return pd.DataFrame(cells, columns=CELL_COLUMNS)


def _paired_p(frame: pd.DataFrame, against: str, block: tuple, metric: str, ours: Dict[int, float],
              n_perm: int) -> float:
    """p-value of this row vs ``against`` on the queries both evaluated (each averaged over seeds)."""
    dataset, split, setting = block
    base = frame[(frame["method"] == against) & (frame["variant"] == "") & (frame["dataset"] == dataset)
                 & (frame["split"] == split) & (frame["setting"] == setting)]
    theirs = _seed_query_means(base, metric) if not base.empty else None
    if not theirs:
        return np.nan
    shared = sorted(set(ours) & set(theirs))
    if not shared:
        return np.nan
    return paired_permutation_test(np.array([ours[q] for q in shared]), np.array([theirs[q] for q in shared]), n_perm)


def _split_matches(reference: pd.DataFrame, split: str) -> pd.Series:
    """Rows of the block's split; a reference row without a split (the FG table names none) matches any."""
    ref_split = reference["split"].astype(str)
    return (ref_split == str(split)) | (ref_split == "")


def _matching(reference: pd.DataFrame, block: tuple, metric: str) -> pd.DataFrame:
    dataset, split, setting = block
    return reference[(reference["dataset"] == dataset) & _split_matches(reference, split)
                     & (reference["setting"] == setting) & (reference["metric"] == metric)]


def _delta(reference: pd.DataFrame, runs: pd.DataFrame, block: tuple, metric: str, delta_vs: str) -> tuple:
    """(our mean - the published number, note): the same method's number if published, else ``delta_vs``'s;
    our value under the published column's protocol when it is known."""
    hits = _matching(reference, block, metric)
    method = runs["method"].iloc[0].lower()
    own = hits[hits["method"].str.lower() == method]
    hit = own if len(own) else hits[hits["method"].str.lower() == delta_vs.lower()]
    if not len(hit):
        return np.nan, ""
    published, preset = float(hit["value"].iloc[0]), str(hit["protocol"].iloc[0])
    if not preset:
        return float(runs[f"metric:{metric}"].mean()) - published, UNKNOWN
    ours = [bp.get(preset, {}).get(metric) for bp in runs["by_protocol"]]
    if any(v is None for v in ours):
        return float(runs[f"metric:{metric}"].mean()) - published, f"no {preset} metrics in the records"
    return float(np.mean(ours)) - published, ""


def _reference_cells(reference: pd.DataFrame, frame: pd.DataFrame, all_blocks: bool) -> List[dict]:
    """Published values for the (dataset, split, setting) blocks our runs cover (with ``all_blocks``:
    every block of the settings we ran); a row without a split joins each of our splits of its block."""
    ours = set(zip(frame["dataset"], frame["split"], frame["setting"]))
    out = []
    for _, r in reference.iterrows():
        split = str(r["split"])
        splits = [s for d, s, st in ours if (d, st) == (r["dataset"], r["setting"])] if split == "" else [split]
        covered = [s for s in splits if (r["dataset"], s, r["setting"]) in ours]
        if all_blocks and r["setting"] in set(frame["setting"]) and not covered:
            covered = splits or ["1"]
        for s in covered:
            out.append({"row": f"{r['method']} (paper)", "dataset": r["dataset"], "split": s,
                        "setting": r["setting"], "metric": r["metric"], "mean": float(r["value"]), "std": np.nan,
                        "n": 0, "ci_lo": np.nan, "ci_hi": np.nan, "p": np.nan, "delta": np.nan, "delta_note": "",
                        "reference": True, "order": int(r["order"]), "bibkey": r["bibkey"]})
    return out
