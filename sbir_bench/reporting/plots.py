"""Figures from saved runs: precision-recall curves, per-class AP bars, retrieval grids (PNG + PDF).

All figures are drawn from what runs saved (embeddings, per-class mAP, image paths), never by
re-running a model, so a figure in a paper can be regenerated from the results folder alone.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import (
    Figure,  # figures without pyplot: no backend is chosen for the caller
)

from ..data.images import load_rgb  # noqa: E402
from ..errors import SbirError  # noqa: E402
from ..log import get_logger  # noqa: E402
from ..retrieval.npz_files import load_embeddings  # noqa: E402
from ..retrieval.scoring import ScoreSource, cosine_scores  # noqa: E402

log = get_logger(__name__)

RECALL_LEVELS = np.linspace(0.0, 1.0, 101)


def save_figure(fig, out_stem: Path) -> List[Path]:
    """Write ``out_stem``.png and .pdf (deterministic metadata); the figure is not pyplot's, so nothing
    needs closing."""
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"Creator": None, "Producer": None, "CreationDate": None})
    return paths


def pr_curve(embeddings: str, max_queries: int = 2000, seed: int = 0, similarity: str = "cosine") -> np.ndarray:
    """Mean interpolated precision at 101 recall levels over (a seeded sample of) the queries of an
    embeddings file, ranked by ``similarity`` (cosine, or minus the squared Euclidean distance: a
    ``pros``-protocol run's)."""
    data = load_embeddings(embeddings)
    if "query_labels" not in data:
        raise SbirError(f"{embeddings}: precision-recall curves need category-level runs (zs or gzs)")
    return pr_curve_of(data, max_queries, seed, similarity)


def pr_curve_of(data: Dict[str, np.ndarray], max_queries: int = 2000, seed: int = 0,
                similarity: str = "cosine") -> np.ndarray:
    """:func:`pr_curve` of embeddings already loaded (:func:`~sbir_bench.retrieval.npz_files.load_embeddings`),
    category level."""
    ql, gl = data["query_labels"], data["gallery_labels"]
    rows = np.flatnonzero(np.isin(ql, gl))
    if len(rows) > max_queries:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_queries, replace=False))
    source = None if similarity == "cosine" else \
        ScoreSource(data["query"], data["gallery"], None, torch.device("cpu"), (similarity,))
    curves = []
    for start in range(0, len(rows), 256):
        block = rows[start: start + 256]
        scores = cosine_scores(data["query"][block], data["gallery"]) if source is None else \
            source.rows(block, similarity).numpy()
        order = np.argsort(-scores, axis=1, kind="stable")
        rel = gl[order] == ql[block, None]
        hits = np.cumsum(rel, axis=1)
        precision = hits / np.arange(1, rel.shape[1] + 1)
        recall = hits / rel.sum(1, keepdims=True)
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        idx = np.array([np.searchsorted(r, RECALL_LEVELS, side="left") for r in recall])
        curves.append(np.take_along_axis(envelope, np.minimum(idx, rel.shape[1] - 1), axis=1))
    return np.concatenate(curves).mean(0)


def plot_pr_curves(runs: Sequence[Tuple[str, str]], out_stem: Path) -> List[Path]:
    """One PR curve per (label, embeddings file)."""
    fig = Figure(figsize=(4.5, 3.6))
    ax = fig.subplots()
    for label, emb in runs:
        ax.plot(RECALL_LEVELS, pr_curve(emb), label=label, linewidth=1.6)
    ax.set(xlabel="recall", ylabel="precision (interpolated)", xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return save_figure(fig, out_stem)


def plot_per_class_ap(record: dict, out_stem: Path, top: int = 40) -> List[Path]:
    """Bars of per-class AP (descending; at most ``top`` classes) of one run."""
    per_class = record.get("per_class_map") or {}
    if not per_class:
        raise SbirError(f"{record.get('run_id', 'run')}: no per-class mAP (instance-level runs have none)")
    names = record.get("class_names") or []
    items = sorted(((names[int(k)] if int(k) < len(names) else k, v) for k, v in per_class.items()),
                   key=lambda kv: (-kv[1], kv[0]))[:top]
    fig = Figure(figsize=(max(4.0, 0.28 * len(items) + 1), 3.2))
    ax = fig.subplots()
    ax.bar(range(len(items)), [v for _, v in items], color="#4C72B0")
    ax.set_xticks(range(len(items)), [n.replace("_", " ") for n, _ in items], rotation=70, ha="right", fontsize=7)
    ax.set(ylabel="AP", ylim=(0, 1), title=f"{record['method']} | {record['dataset']} {record['setting']}")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out_stem)


def plot_retrieval_grid(embeddings: str, out_stem: Path, n_queries: int = 4, k: int = 8, seed: int = 0) -> List[Path]:
    """Each row: a sketch query, then its top-k photos framed green (correct) or red (wrong)."""
    data = load_embeddings(embeddings)
    if "query_paths" not in data:
        raise SbirError(f"{embeddings}: no image paths saved with these embeddings (rerun with a current sbir-bench)")
    instance = "query_to_gallery" in data
    if n_queries > len(data["query"]) or k > len(data["gallery"]):
        log.warning(f"retrieval grid of {embeddings}: {len(data['query'])} queries and {len(data['gallery'])} photos "
                    f"saved, so {min(n_queries, len(data['query']))} rows of {min(k, len(data['gallery']))} photos "
                    f"are drawn (asked for {n_queries} x {k})")
    k = min(k, len(data["gallery"]))
    rows = np.sort(np.random.default_rng(seed).choice(len(data["query"]), min(n_queries, len(data["query"])), replace=False))
    top = np.argsort(-cosine_scores(data["query"][rows], data["gallery"]), axis=1, kind="stable")[:, :k]
    fig = Figure(figsize=(1.1 * (k + 1), 1.15 * len(rows)))
    axes = fig.subplots(len(rows), k + 1, squeeze=False)
    for i, q in enumerate(rows):
        _show(axes[i, 0], data["query_paths"][q], "black")
        for j, g in enumerate(top[i]):
            ok = g == data["query_to_gallery"][q] if instance else data["gallery_labels"][g] == data["query_labels"][q]
            _show(axes[i, j + 1], data["gallery_paths"][g], "#1a9e3f" if ok else "#d62728")
    axes[0, 0].set_title("query", fontsize=8)
    for j in range(k):
        axes[0, j + 1].set_title(f"#{j + 1}", fontsize=8)
    fig.subplots_adjust(wspace=0.08, hspace=0.08)
    return save_figure(fig, out_stem)


def _show(ax, path: str, colour: str) -> None:
    image = load_rgb(str(path))
    ax.imshow(np.asarray(image) if image is not None else np.full((8, 8, 3), 200, np.uint8))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)


def _slug(text: str) -> str:
    """A file-name-safe form of a table row label (``coop [no-jigsaw]`` -> ``coop-no-jigsaw``)."""
    return "-".join("".join(ch if ch.isalnum() or ch in "._" else " " for ch in text).split())


def file_stems(labels: Sequence[str]) -> Dict[str, str]:
    """One distinct file-name stem per distinct label: :func:`_slug`, plus a short hash of the label
    where two labels would share a slug (so no figure overwrites another's)."""
    slugs = {label: _slug(label) for label in dict.fromkeys(labels)}
    clash = {v for v in slugs.values() if list(slugs.values()).count(v) > 1}
    return {label: slug + (f"-{hashlib.sha256(label.encode()).hexdigest()[:6]}" if slug in clash else "")
            for label, slug in slugs.items()}


Series = Dict[str, Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]]


def curve_series(frame) -> Series:
    """Per table row and per history value (loss terms, lr, gradient norm, validation metrics): epochs,
    the mean over the row's seeds, and the lowest and highest seed (the band), from the records alone."""
    values: Dict[str, Dict[str, Dict[int, List[float]]]] = {}
    for row, record in zip(frame["row"], frame["record"]):
        history = readable_history(record)
        for h in history:
            for key, value in h.items():
                if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                    values.setdefault(row, {}).setdefault(key, {}).setdefault(int(h["epoch"]), []).append(float(value))
    out: Series = {}
    for row, by_key in values.items():
        for key, by_epoch in by_key.items():
            epochs = np.array(sorted(by_epoch))
            runs = [np.array(by_epoch[e]) for e in epochs]
            out.setdefault(row, {})[key] = (epochs, np.array([r.mean() for r in runs]),
                                           np.array([r.min() for r in runs]), np.array([r.max() for r in runs]))
    return out


def readable_history(record: str) -> List[Dict[str, Any]]:
    """The training history of the record at ``record``: a list of rows, each with a whole ``epoch``; a
    damaged one (not a list, a row without its epoch) is left out with one warning, as a damaged record is."""
    history = (json.loads(Path(record).read_text()).get("train") or {}).get("history") or []
    good = isinstance(history, list) and all(
        isinstance(h, dict) and isinstance(h.get("epoch"), (int, float)) and not isinstance(h.get("epoch"), bool)
        and math.isfinite(h["epoch"]) and float(h["epoch"]).is_integer() for h in history)
    if not good:
        log.warning(f"{record}: its training history is damaged (each row needs a whole epoch); left out of the curves")
        return []
    return history


def plot_curves(series: Series, out_stem: Path) -> List[Path]:
    """One panel per history value, one line per table row (mean over seeds) with a min-max band."""
    keys = sorted({k for by_key in series.values() for k in by_key}, key=lambda k: (k.startswith("val_"), k))
    if not keys:
        raise SbirError("no training history in these records (zero-shot runs train nothing)")
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig = Figure(figsize=(3.4 * cols, 2.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for row, by_key in series.items():
            if key in by_key:
                epochs, mean, low, high = by_key[key]
                line, = ax.plot(epochs, mean, label=row, linewidth=1.5)
                ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set(title=key, xlabel="epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return save_figure(fig, out_stem)


def plot_runs(frame, kind: str, out: Path, queries: int, top_k: int) -> List[Path]:
    """Every figure of ``kind`` for the runs of ``frame``: per (dataset, split, setting), one PR curve per
    method and variant (its last seed), and per-class bars and a retrieval grid for each of those runs."""

    written: List[Path] = []
    stems = file_stems(list(frame["row"]))
    for (dataset, split, setting), block in frame.groupby(["dataset", "split", "setting"], sort=True):
        tag = f"{dataset}_split{split}_{setting}"
        if kind == "curves":
            written += plot_curves(curve_series(block), out / f"curves_{tag}")
            continue
        latest = block.drop_duplicates("row", keep="last")  # one curve per table row: its last seed
        if kind in ("pr", "all") and setting != "fg":
            written += plot_pr_curves(list(zip(latest["row"], latest["embeddings"])), out / f"pr_{tag}")
        for _, run in latest.iterrows():
            stem = f"{stems[run['row']]}_{tag}_seed{run['seed']}"
            if kind in ("per-class", "all") and setting != "fg":
                written += plot_per_class_ap(json.loads(Path(run["record"]).read_text()), out / f"per_class_{stem}")
            if kind in ("grid", "all"):
                written += plot_retrieval_grid(run["embeddings"], out / f"grid_{stem}", queries, top_k)
    return written
