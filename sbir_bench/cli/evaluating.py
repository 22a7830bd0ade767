"""``sbir-bench eval``: score saved embeddings under one protocol, or under every preset side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import click

from ..config import EvalConfig
from ..errors import ConfigError, DataError
from . import main
from .common import config_option, friendly_errors, knob_overrides, protocol_options, split_list


def _embeddings_path(emb_path: Optional[str], record: Optional[str]) -> str:
    """The embeddings to score: given directly, or the ones a run record points to."""
    if bool(emb_path) == bool(record):
        raise ConfigError("give exactly one of --embeddings FILE.npz or --record RUN.json")
    if emb_path:
        return emb_path
    path = Path(record)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"run record {path} is unreadable ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not data.get("embeddings"):
        raise DataError(f"run record {path} points to no saved embeddings (run with eval.save_embeddings=true)")
    return data["embeddings"]


def _protocols(preset: str, presets: Optional[str], overrides: Dict[str, Any]) -> List[Any]:
    from ..retrieval.protocol import PRESETS, resolve_protocol
    if presets is None:
        return [resolve_protocol(preset, overrides)]
    names = list(PRESETS) if presets.strip() == "all" else split_list(presets)
    return [resolve_protocol(name, overrides) for name in names]


@main.command("eval")
@click.option("--embeddings", "emb_path", type=click.Path(),
              help="A .npz with query, gallery and query_labels+gallery_labels and/or query_to_gallery.")
@click.option("--record", type=click.Path(), help="A run record (.json): score the embeddings it saved.")
@click.option("--json", "json_out", type=click.Path(), help="Write the result (metrics, per-class mAP, protocol) here.")
@config_option("--protocol", EvalConfig, "protocol", default="sbir-bench")
@click.option("--protocols", "presets", help="'all' or a comma-separated list of presets: every metric under each, "
                                             "side by side, with the spread between them.")
@protocol_options
@click.option("--eval-memory", default="1GiB", show_default=True, help="Memory budget for score blocks (or auto).")
@click.option("--backend", type=click.Choice(["exact", "faiss"]), default="exact", show_default=True,
              help="exact: every metric; faiss: top-K metrics only, for million-photo galleries.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def eval_command(emb_path: Optional[str], record: Optional[str], json_out: Optional[str], protocol: str,
                 presets: Optional[str], eval_memory: str, backend: str, device: str, quiet: bool, **knobs: Any) -> None:
    """Evaluate saved embeddings (every run saves them) without re-encoding any image.

    \b
    Examples:
      sbir-bench eval --embeddings results/runs/<run-id>/embeddings.npz
      sbir-bench eval --record results/runs/<run-id>.json --protocols all
      sbir-bench eval --embeddings emb.npz --protocol sake --json metrics.json --quiet
      sbir-bench eval --embeddings emb.npz --normalization hits --interpolation none
      sbir-bench eval --embeddings huge.npz --backend faiss --map-k 200 --prec-k 200
    """
    from ..engine.distributed import local_device
    from ..fileio import atomic_write_json, check_output_file
    from ..log import set_quiet
    from ..reporting.render import metrics_table, protocols_table
    from ..retrieval import evaluate_many
    from ..retrieval.embedding_files import load_embeddings

    set_quiet(quiet)
    if json_out:
        check_output_file(json_out, "--json")
    path = _embeddings_path(emb_path, record)
    protocols = _protocols(protocol, presets, knob_overrides(knobs))
    data = load_embeddings(path)
    arrays = (data["query"], data["gallery"], data.get("query_labels"), data.get("gallery_labels"),
              data.get("query_to_gallery"))
    if backend == "faiss":
        from ..retrieval.faiss_topk import evaluate_topk
        results = [evaluate_topk(*arrays, protocol=p) for p in protocols]
    else:
        results = evaluate_many(*arrays, protocols=protocols, memory=eval_memory, device=local_device(device),
                                desc="evaluating", query_seen=data.get("query_seen"))
    _report(path, results, presets is not None, json_out, atomic_write_json, metrics_table, protocols_table)


def _report(path: str, results: List[Any], side_by_side: bool, json_out: Optional[str], write_json, metrics_table,
            protocols_table) -> None:
    """Print one metrics table, or the protocols side by side; write --json."""
    first = results[0]
    counted = f"{first.n_queries - first.n_excluded} queries ({first.n_excluded} without a relevant item excluded)"
    if side_by_side:
        click.echo(f"{counted}; the same embeddings under each protocol (docs/metrics.md):")
        click.echo(protocols_table({r.protocol["preset"]: r.metrics for r in results}))
    else:
        click.echo(metrics_table(first.metrics, f"{counted}; protocol {first.protocol['preset']}"))
    if json_out:
        payload = {"embeddings": str(path), **first.to_json()} if not side_by_side else \
            {"embeddings": str(path), "protocols": {r.protocol["preset"]: r.to_json() for r in results}}
        write_json(json_out, payload)
