"""Gather run records into one flat table (one row per run), reporting any file it had to skip."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ..progress import warn
from ..records import find_record_files, load_records

KEYS = ("method", "variant", "dataset", "setting", "split", "backbone", "seed")


def runs_frame(patterns: Sequence[str] = (), default_dir: str | Path = "results/runs",
               datasets: Iterable[str] = (), settings: Iterable[str] = (), methods: Iterable[str] = ()) -> pd.DataFrame:
    """Rows: runs; columns: the identifying keys, ``metric:<name>`` values, record and per-query paths."""
    records, skipped = load_records(find_record_files(patterns, default_dir))
    for path, reason in skipped:
        warn(f"skipped {path}: {reason}")
    rows = []
    for rec in records:
        d = rec.data
        row = {k: str(d.get(k) or "") for k in KEYS}
        row["seed"] = int(d.get("seed", 0))
        row.update({f"metric:{m}": float(v) for m, v in d["metrics"].items()})
        row["record"] = str(rec.path)
        row["per_query"] = d.get("per_query") or ""
        row["embeddings"] = d.get("embeddings") or ""
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    for column, wanted in (("dataset", datasets), ("setting", settings), ("method", methods)):
        wanted = list(wanted)
        if wanted:
            frame = frame[frame[column].isin(wanted)]
    return frame.sort_values(list(KEYS)).reset_index(drop=True)


def metric_names(frame: pd.DataFrame) -> List[str]:
    """Metric names present, in a stable, conventional order."""
    order = ["mAP@all", "mAP@200", "P@100", "P@200", "Acc@1", "Acc@5", "Acc@10"]
    present = [c[len("metric:"):] for c in frame.columns if c.startswith("metric:")]
    return [m for m in order if m in present] + sorted(m for m in present if m not in order)


def per_query_values(path: str, metric: str) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(query positions, per-query values of ``metric``) saved with a run, or None if unavailable."""
    if not path or not Path(path).is_file():
        return None
    key = ("AP@all" if metric == "mAP@all" else metric).replace("@", "_at_")
    with np.load(path, allow_pickle=False) as z:
        if key not in z.files:
            return None
        return z["query_index"], z[key]
