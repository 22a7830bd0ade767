"""Gather run records into one flat table (one row per run), reporting any file it had to skip.

Runs are averaged over seeds only when they are the same experiment: same method, variant,
backbone, evaluation protocol, GZS protocol, resolved config (up to the seed and where files go)
and copy of the data (the record's data fingerprint: counts and a hash of the file list, not the
folder it lives in). :func:`row_labels` gives each experiment its table row, naming what tells rows
apart. A row's n is its number of *distinct* seeds: a second record of the same seed (a run
repeated, or the same seed on two copies of the same data) is reported and counted once, never
averaged in as if it were another seed (:func:`drop_repeated_seeds`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence

import pandas as pd

from ..config import config_id
from ..errors import DataError
from ..log import get_logger
from ..records import beside_record, find_record_files, load_records
from ..retrieval.protocol import DEFAULT_PRESET, metric_sort_key

log = get_logger(__name__)

KEYS = ("method", "variant", "dataset", "setting", "split", "backbone", "seed")
def _row(rec) -> Dict[str, Any]:
    d = rec.data
    row: Dict[str, Any] = {k: str(d.get(k) or "") for k in KEYS}
    row["seed"] = int(d.get("seed", 0))
    row["protocol"] = str((d.get("protocol") or {}).get("preset") or DEFAULT_PRESET)
    row["gzs_protocol"] = str(d.get("gzs_protocol") or "")
    row["gallery"] = str(((d.get("config") or {}).get("data") or {}).get("gallery") or "unique")
    row["selected_on"] = str((d.get("model_selection") or {}).get("on") or "")  # "test": chose its model on its test
    row["sampler"] = str(((d.get("config") or {}).get("train") or {}).get("sampler") or "triplets")
    row["config_id"] = config_id(d.get("config") or {})
    fingerprint = d.get("data_fingerprint")
    row["data_id"] = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:8] if fingerprint else ""
    row["created"] = str((d.get("provenance") or {}).get("created") or "")
    row.update({f"metric:{m}": float(v) for m, v in d["metrics"].items()})
    row["by_protocol"] = d.get("metrics_by_protocol") or {}
    row["record"] = str(rec.path)
    row["per_query"] = beside_record(rec.path, d.get("per_query"))
    row["embeddings"] = beside_record(rec.path, d.get("embeddings"))
    return row


def runs_frame(patterns: Sequence[str] = (), default_dir: str | Path = "results/runs",
               datasets: Iterable[str] = (), settings: Iterable[str] = (), methods: Iterable[str] = ()) -> pd.DataFrame:
    """Rows: runs; columns: the identifying keys, ``metric:<name>`` values, record and per-query paths."""
    records, skipped = load_records(find_record_files(patterns, default_dir))
    for path, reason in skipped:
        log.warning(f"skipped {path}: {reason}")
    frame = pd.DataFrame([_row(rec) for rec in records])
    if frame.empty:
        return frame
    everything = frame
    for column, wanted in (("dataset", datasets), ("setting", settings), ("method", methods)):
        wanted = list(wanted)
        if wanted:
            frame = frame[frame[column].isin(wanted)]
    if frame.empty:
        present = "; ".join(f"{c}s: {', '.join(sorted(set(everything[c])))}" for c in ("dataset", "setting", "method"))
        raise DataError(f"none of the {len(everything)} run record(s) matches the --dataset/--setting/--method "
                        f"filters (the records hold {present})")
    frame = frame.sort_values(list(KEYS)).reset_index(drop=True)
    frame["row"] = row_labels(frame)
    return drop_repeated_seeds(frame)


def drop_repeated_seeds(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep one record per (row, dataset, split, setting, seed), the first created; warn about the rest.

    Two records of one seed of one experiment on one copy of the data are the same measurement
    twice: averaging them would print "± 0.000 (2)" for a single seed.
    """
    keys = ["row", "dataset", "split", "setting", "seed"]
    ordered = frame.sort_values(keys + ["created", "record"], kind="stable")
    repeated = ordered.duplicated(keys, keep="first")
    for _, group in ordered[ordered.duplicated(keys, keep=False)].groupby(keys, sort=True):
        kept, *others = list(group["record"])
        row, dataset, split, setting, seed = group[keys].iloc[0]
        log.warning(f"{row} on {dataset} split {split} {setting}: seed {seed} has {len(group)} records; counted once "
                    f"(kept {kept}; repeated: {', '.join(others)})")
    return frame.loc[~repeated.reindex(frame.index)].reset_index(drop=True)


def row_labels(frame: pd.DataFrame) -> List[str]:
    """Table row of each run: ``method [variant]``, plus what differs between otherwise equal rows of
    the same (dataset, split, setting) block: backbone, protocol, GZS protocol, gallery composition
    (``data.gallery``), the training sampler (``train.sampler``), a config number when
    the configs differ otherwise, a data number when the copies of the dataset hold different files; and on
    every row whose model was chosen on its own test set (``train.select_on: test``), that it was."""
    if frame.empty:
        return []
    base = [f"{m} [{v}]" if v else m for m, v in zip(frame["method"], frame["variant"])]
    block = list(zip(frame["dataset"], frame["split"], frame["setting"]))
    labels = []
    for i, label in enumerate(base):
        same = [j for j, other in enumerate(base) if other == label and block[j] == block[i]]
        extras = []
        for key, show in (("backbone", lambda x: x), ("protocol", lambda x: f"protocol {x}"),
                          ("gzs_protocol", lambda x: f"GZS {x}"), ("gallery", lambda x: f"{x} gallery"),
                          ("sampler", lambda x: f"{x} sampler")):
            if key in frame and len({frame[key].iloc[j] for j in same}) > 1:
                extras.append(show(frame[key].iloc[i]))
        for key, word in (("config_id", "config"), ("data_id", "data")):
            ids = sorted({frame[key].iloc[j] for j in same})
            if len(ids) > 1:
                extras.append(f"{word} {ids.index(frame[key].iloc[i]) + 1}")
        if "selected_on" in frame and frame["selected_on"].iloc[i] == "test":  # always said: it inflates
            extras.append("model selected on the test set")
        labels.append(label + (f" ({', '.join(extras)})" if extras else ""))
    return labels


def metric_names(frame: pd.DataFrame) -> List[str]:
    """Metric names present, in the conventional order (:func:`~sbir_bench.retrieval.protocol.metric_sort_key`)."""
    return sorted((c[len("metric:"):] for c in frame.columns if c.startswith("metric:")), key=metric_sort_key)
