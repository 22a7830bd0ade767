"""What choosing the kept model on the test set buys: test-selected minus validation-selected, per cell.

ProS's, DePro's and UCDR-Adapter's official code keep the epoch that scores best on the test queries
and gallery (``train.select_on: test``). ``reproduce --select-on both`` trains every cell both ways
(the same seed, schedule and early stopping; only what chooses the kept epoch differs), and this
module pairs the two records of each (cell, seed) and reports the difference of every metric, the
inflation a test-selected number carries. It reads records only.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import pandas as pd

from ..errors import SbirError
from ..fileio import atomic_write_bytes
from .collect import metric_names, runs_frame

PAIR_KEYS = ("method", "dataset", "setting", "split", "backbone", "seed")


def inflation_frame(frame: pd.DataFrame, suffix: str) -> pd.DataFrame:
    """One row per (method, dataset, setting, split, seed) run both ways: each metric under validation
    selection, under test selection, and their difference. ``suffix``: the variant ending that names a
    test-selected run (``reproduce.TEST_SELECTED``), stripped to pair it with its validation twin.

    >>> rows = pd.DataFrame({"method": ["coop"] * 2, "variant": ["", "test-selected"], "dataset": ["mini"] * 2,
    ...     "setting": ["zs"] * 2, "split": ["1"] * 2, "backbone": ["t"] * 2, "seed": [0, 0],
    ...     "selected_on": ["validation", "test"], "metric:mAP@all": [0.40, 0.43]})
    >>> inflation_frame(rows, "test-selected")[["method", "metric", "validation", "test", "inflation"]].round(2).values.tolist()
    [['coop', 'mAP@all', 0.4, 0.43, 0.03]]
    """
    metrics = metric_names(frame)
    frame = frame.assign(base_variant=frame["variant"].str.replace(f"+{suffix}", "", regex=False)
                         .str.replace(suffix, "", regex=False))
    keys = [*PAIR_KEYS, "base_variant"]
    val = frame[frame["selected_on"] == "validation"].set_index(keys)
    test = frame[frame["selected_on"] == "test"].set_index(keys)
    both = val.index.intersection(test.index)
    rows = []
    for key in both:
        for m in metrics:
            a, b = float(val.loc[key, f"metric:{m}"]), float(test.loc[key, f"metric:{m}"])
            rows.append({**dict(zip(keys, key)), "metric": m, "validation": a, "test": b, "inflation": b - a})
    return pd.DataFrame(rows)


def inflation_markdown(pairs: pd.DataFrame) -> str:
    """Mean over seeds of each (method, cell, metric): validation-selected, test-selected, the inflation."""
    if pairs.empty:
        raise SbirError("no cell was run both ways (validation- and test-selected): nothing to compare; "
                        "run reproduce with --select-on both")
    grouped = pairs.groupby(["method", "base_variant", "dataset", "setting", "split", "metric"], sort=False)
    lines = ["| method | cell | metric | seeds | validation-selected | test-selected | inflation |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for (method, variant, dataset, setting, split, metric), g in grouped:
        label = f"{method} [{variant}]" if variant else method
        lines.append(f"| {label} | {dataset} {setting} split {split} | {metric} | {len(g)} | {g['validation'].mean():.4f} | "
                     f"{g['test'].mean():.4f} | {g['inflation'].mean():+.4f} |")
    return "\n".join(lines)


def write_inflation(setting: str, output_dir: Path, suffix: str, configs=None) -> List[Path]:
    """``selection_<setting>.md`` beside a reproduce table: the inflation of every cell run both ways."""
    frame = runs_frame([], output_dir, settings=[setting])
    if configs is not None and not frame.empty:
        frame = frame[frame["config_id"].isin(set(configs))]
    text = inflation_markdown(inflation_frame(frame, suffix))
    return [atomic_write_bytes(Path(output_dir) / f"selection_{setting}.md", (text + "\n").encode())]
