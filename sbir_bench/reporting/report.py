"""``sbir-bench report``: a self-contained static folder to open in a browser (no server, no CDN).

What it holds, read from records and the files beside them (``embeddings.npz``, ``per_query.npz``):

* the table as ``compare`` prints it (mean +- std over seeds, protocol and model selection named in the
  row label, the literature rows and deltas where asked), sortable by any column;
* per run: per-class AP, the precision-recall curve (under the run's own similarity), the training
  curves of the record's history;
* every query of every run: class, its per-query metrics, and its top-k photos with ranks, scores and
  right/wrong (ranked as the run's protocol ranks: cosine, or minus the squared Euclidean distance);
* two runs of the same query set side by side: per-query and per-class differences, both top-k lists.

Thumbnails are made from the user's dataset copy, bounded (``thumb_queries`` queries per run, chosen
as the lowest- and highest-scoring, a seeded sample, and each comparable pair's largest wins, each with
its top-k photos, at ``thumb_px`` pixels), so the folder can be shared without the dataset; an image
that cannot be read is a placeholder, never a failure. The page states these bounds.

A value a query does not have (a query its protocol leaves out of a metric) is ``null`` in the data and
"-" on the page, never a number; NaN or an infinity, which no record should hold, is written the same
way rather than as a number JSON cannot carry.

Data files are JavaScript (``window.SBIR_...=``) so the page opens from ``file://`` (browsers refuse
``fetch`` of local JSON there); a run's queries are loaded when its view first opens.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ..data.images import load_rgb
from ..errors import SbirError
from ..fileio import atomic_write_bytes
from ..log import get_logger, progress
from ..retrieval.npz_files import load_embeddings
from ..retrieval.scoring import ScoreSource, block_rows
from .plots import pr_curve_of, readable_history
from .render import table_data

log = get_logger(__name__)

PAGE_FILES = ("index.html", "report.js", "report.css")  # package data: sbir_bench/reporting/page/


@dataclass(frozen=True)
class ReportLimits:
    """How much a report holds: top-k photos per query; thumbnails for at most ``thumb_queries``
    queries per run (and their top-k photos), ``thumb_px`` pixels on the long side."""

    top_k: int = 10
    thumb_queries: int = 300
    thumb_px: int = 96


def _js(name: str, value: Any) -> bytes:
    """A data file the page loads with a <script> tag (works from file://)."""
    return f"window.{name} = {json.dumps(value, separators=(',', ':'), allow_nan=False)};\n".encode()


def _clean(x: Any) -> Any:
    """NaN and infinities as null (JSON has neither); numpy scalars as Python numbers."""
    if isinstance(x, (float, np.floating)):
        return None if not np.isfinite(x) else round(float(x), 6)
    if isinstance(x, np.integer):
        return int(x)
    return x


def per_query_table(path: str, n_queries: int) -> Dict[str, List[Optional[float]]]:
    """Every metric of a ``per_query.npz`` as a list over all queries (None where a query has none)."""
    out: Dict[str, List[Optional[float]]] = {}
    if not path or not Path(path).is_file():
        return out
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            if key == "query_index" or key.startswith("query_index_"):
                continue
            index = z[f"query_index_{key}"] if f"query_index_{key}" in z.files else z["query_index"]
            column: List[Optional[float]] = [None] * n_queries
            for i, v in zip(index.tolist(), z[key].tolist()):
                column[i] = _clean(v)
            out[key.replace("_at_", "@")] = column
    return out


def ranked(data: Dict[str, np.ndarray], similarity: str, k: int) -> tuple:
    """(top-k gallery indices, their scores) of every query, as the run's similarity ranks them."""
    source = ScoreSource(data["query"], data["gallery"], None, torch.device("cpu"), similarities=(similarity,))
    k = min(k, source.n_gallery)
    step = max(1, min(block_rows(source.n_gallery, "512MiB"), 4096))
    tops, scores = [], []
    for start in progress(range(0, source.n_query, step), desc="ranking", unit="block"):
        rows = np.arange(start, min(start + step, source.n_query))
        values, idx = torch.topk(source.rows(rows, similarity), k, dim=1)
        tops.append(idx.numpy())
        scores.append(values.numpy())
    return np.concatenate(tops), np.concatenate(scores)


def _correct(data: Dict[str, np.ndarray], top: np.ndarray) -> np.ndarray:
    if "query_to_gallery" in data:
        return top == data["query_to_gallery"][:, None]
    return data["gallery_labels"][top] == data["query_labels"][:, None]


def _thumb(src: str, folder: Path, px: int, made: Dict[str, Optional[str]]) -> Optional[str]:
    """``thumbs/<hash>.jpg`` of image ``src`` (made once), or None when the image cannot be read."""
    if src in made:
        return made[src]
    name = hashlib.sha1(src.encode()).hexdigest()[:20] + ".jpg"
    target = folder / name
    if not target.exists():
        image = load_rgb(src, warn_once=False) if Path(src).is_file() else None
        if image is None:
            made[src] = None
            return None
        image.thumbnail((px, px))
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, quality=82)
    made[src] = f"thumbs/{name}"
    return made[src]


def _primary(values: Dict[str, List[Optional[float]]]) -> Optional[str]:
    for metric in ("AP@all", "Acc@1", "AP@200"):
        if metric in values:
            return metric
    return next(iter(values), None)


def chosen_queries(values: Dict[str, List[Optional[float]]], n_queries: int, limit: int, seed: int = 0) -> List[int]:
    """The queries that get thumbnails: all when they are few, else the lowest- and highest-scoring
    thirds of ``limit`` under the primary metric and a seeded sample for the rest."""
    if n_queries <= limit:
        return list(range(n_queries))
    metric = _primary(values)
    score = np.array([-1.0 if v is None else v for v in values[metric]]) if metric else np.zeros(n_queries)
    order = np.argsort(score, kind="stable")
    third = limit // 3
    picked = set(order[:third].tolist()) | set(order[::-1][:third].tolist())
    rest = np.setdiff1d(np.arange(n_queries), np.fromiter(picked, int))
    picked |= set(np.random.default_rng(seed).choice(rest, min(len(rest), limit - len(picked)), replace=False).tolist())
    return sorted(picked)


class RunPayload:
    """One run's data for the page: what its record says, and its queries (when embeddings were saved)."""

    def __init__(self, index: int, row: pd.Series, limits: ReportLimits) -> None:
        self.index, self.row, self.limits = index, row, limits
        self.record = json.loads(Path(row["record"]).read_text())
        self.data = load_embeddings(row["embeddings"]) if row["embeddings"] and Path(row["embeddings"]).is_file() else None
        self.similarity = str((self.record.get("protocol") or {}).get("similarity") or "cosine")
        self.queries: Optional[Dict[str, Any]] = None
        self.thumb_rows: List[int] = []

    @property
    def query_key(self) -> Optional[str]:
        """What identifies the query list (two runs are compared query by query only when equal)."""
        if self.data is None or "query_paths" not in self.data:
            return None
        return hashlib.sha1("\n".join(self.data["query_paths"].tolist()).encode()).hexdigest()

    def rank(self) -> None:
        if self.data is None:
            return
        top, scores = ranked(self.data, self.similarity, self.limits.top_k)
        n = len(self.data["query"])
        values = per_query_table(self.row["per_query"], n)
        labels = self.data["query_labels"] if "query_labels" in self.data else np.full(n, -1)
        self.queries = {"metrics": list(values), "values": values, "label": labels.tolist(),
                        "top": top.ravel().tolist(), "score": np.round(scores.ravel().astype(float), 4).tolist(),
                        "ok": _correct(self.data, top).ravel().astype(int).tolist(), "k": int(top.shape[1]),
                        "gallery_label": (self.data["gallery_labels"].tolist() if "gallery_labels" in self.data
                                          else [-1] * len(self.data["gallery"]))}
        self.thumb_rows = chosen_queries(values, n, self.limits.thumb_queries)

    def thumbnails(self, folder: Path, made: Dict[str, Optional[str]], extra: Sequence[int] = ()) -> None:
        if self.queries is None or "query_paths" not in self.data:
            return
        k = self.queries["k"]
        qthumb, gthumb, qname = {}, {}, {}
        for q in progress(sorted(set(self.thumb_rows) | set(extra)), desc=f"thumbnails of run {self.index}",
                          unit="query"):
            path = str(self.data["query_paths"][q])
            qthumb[q], qname[q] = _thumb(path, folder, self.limits.thumb_px, made), Path(path).name
            for g in self.queries["top"][q * k:(q + 1) * k]:
                if g not in gthumb:
                    gthumb[g] = _thumb(str(self.data["gallery_paths"][g]), folder, self.limits.thumb_px, made)
        self.queries.update(qthumb=qthumb, gthumb=gthumb, qname=qname)

    def meta(self) -> Dict[str, Any]:
        rec, row = self.record, self.row
        names = rec.get("class_names") or []
        per_class = sorted(((names[int(c)] if int(c) < len(names) else str(c), _clean(v))
                            for c, v in (rec.get("per_class_map") or {}).items()), key=lambda x: -(x[1] or 0))
        history = [{k: _clean(v) for k, v in h.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                   for h in readable_history(row["record"])]  # a damaged history: left out with a warning
        pr = None
        if self.data is not None and "query_labels" in self.data and rec.get("level") != "instance":  # FG: no PR
            pr = [_clean(v) for v in pr_curve_of(self.data, similarity=self.similarity)]
        return {"id": self.index, "label": row["row"], "method": row["method"], "variant": row["variant"],
                "dataset": row["dataset"], "setting": row["setting"], "split": row["split"], "seed": int(row["seed"]),
                "protocol": row["protocol"], "similarity": self.similarity,
                "selected_on": row["selected_on"], "metrics": {k: _clean(v) for k, v in rec["metrics"].items()},
                "class_names": names, "per_class": per_class, "history": history, "pr": pr,
                "n_queries": int(rec.get("n_queries") or 0), "has_queries": self.queries is not None,
                "record": Path(row["record"]).name}


def _pair_extremes(runs: List[RunPayload], count: int) -> Dict[int, set]:
    """Per run, the queries where it beats or trails a comparable run by most (they get thumbnails)."""
    extra: Dict[int, set] = {r.index: set() for r in runs}
    for a in runs:
        for b in runs:
            if a.index >= b.index or a.queries is None or b.queries is None or a.query_key != b.query_key:
                continue
            metric = _primary(a.queries["values"])
            if metric is None or metric not in b.queries["values"]:
                continue
            diff = np.array([(x if x is not None else np.nan) - (y if y is not None else np.nan) for x, y in
                             zip(a.queries["values"][metric], b.queries["values"][metric])], dtype=float)
            order = np.argsort(np.nan_to_num(diff, nan=0.0), kind="stable")
            chosen = set(order[:count].tolist()) | set(order[::-1][:count].tolist())
            extra[a.index] |= chosen
            extra[b.index] |= chosen
    return extra


def build_report(frame: pd.DataFrame, cells: pd.DataFrame, out_dir: Path, limits: ReportLimits = ReportLimits(),
                 digits: int = 3) -> Path:
    """Write the report folder for the runs of ``frame`` (:func:`~.collect.runs_frame`) and their
    compare table ``cells`` (:func:`~.compare.compare`); returns its ``index.html``. Nothing of the
    user's is changed."""
    if frame.empty:
        raise SbirError("no run records: nothing to report")
    out_dir = Path(out_dir)
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    runs = [RunPayload(i, row, limits) for i, (_, row) in enumerate(frame.iterrows())]
    for run in runs:
        run.rank()
    made: Dict[str, Optional[str]] = {}
    extremes = _pair_extremes(runs, limits.thumb_queries // 6)
    for run in runs:
        run.thumbnails(out_dir / "thumbs", made, sorted(extremes[run.index]))
    keys = [r.query_key for r in runs]
    metas = [r.meta() for r in runs]
    for meta, key in zip(metas, keys):
        meta["comparable"] = [j for j, other in enumerate(keys) if key and other == key and j != meta["id"]]
    report = {"table": table_data(cells, digits), "runs": metas,
              "limits": {"top_k": limits.top_k, "thumb_queries": limits.thumb_queries, "thumb_px": limits.thumb_px,
                         "thumbnails": sum(1 for v in made.values() if v), "unreadable": sum(1 for v in made.values()
                                                                                           if v is None)}}
    atomic_write_bytes(out_dir / "data" / "report.js", _js("SBIR_REPORT", report))
    for run in runs:
        if run.queries is not None:
            atomic_write_bytes(out_dir / "data" / f"run-{run.index}.js",
                               "window.SBIR_RUNS = window.SBIR_RUNS || {};\n".encode() +
                               _js(f"SBIR_RUNS[{run.index}]", run.queries))
    page = resources.files("sbir_bench.reporting").joinpath("page")
    for name in PAGE_FILES:
        atomic_write_bytes(out_dir / name, page.joinpath(name).read_bytes())
    return out_dir / "index.html"
