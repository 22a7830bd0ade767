"""``sbir-bench eval``: score saved embeddings under one protocol, or under every preset side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import click

from ..config import EvalConfig
from ..gpus import parse_memory
from ..data.tasks import SETTINGS
from ..errors import ConfigError, DataError
from ..records import beside_record
from . import main
from .common import (
    config_option,
    friendly_errors,
    knob_overrides,
    protocol_options,
    split_list,
)


def checked_memory(value: str) -> str:
    """``--eval-memory`` read as the config reads ``eval.memory``: a size it cannot read is a usage error now,
    before any embedding is loaded."""
    try:
        parse_memory(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--eval-memory") from None
    return value


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
    return beside_record(path, data["embeddings"])


def _protocols(preset: str, presets: Optional[str], overrides: Dict[str, Any], preset_given: bool) -> List[Any]:
    """The protocols to score under: ``--protocol`` (one), or ``--protocols`` (``all`` and/or names)."""
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..retrieval.protocol import PRESETS, resolve_protocol
    if presets is None:
        return [resolve_protocol(preset, overrides)]
    if preset_given:
        raise ConfigError("give --protocol PRESET (one) or --protocols LIST (several), not both")
    names = split_list(presets)
    if not names:
        raise ConfigError(f"--protocols needs 'all' or a comma-separated list of presets ({', '.join(PRESETS)})")
    if "all" in names:
        names = list(PRESETS) + [n for n in names if n != "all"]
    return [resolve_protocol(name, overrides) for name in dict.fromkeys(names)]


def model_config(artifact, opts: Dict[str, Any]):
    """The run config of ``eval --model``: the artifact's own (method, backbone, seed, protocol), with the
    task replaced by what the options name; a new dataset starts from its split 1 and default root."""
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..config import build_run_config
    tree = json.loads(json.dumps(artifact.meta["config"]))
    data = tree.setdefault("data", {})
    if opts.get("dataset") and opts["dataset"] != data.get("dataset"):
        data.update(dataset=opts["dataset"], split="1", split_file=None, data_root=None, max_per_class=None)
    if opts.get("split"):
        data.update(split=opts["split"], split_file=None)
    overrides = {"data.setting": opts.get("setting"), "data.split_file": opts.get("split_file"),
                 "data.data_root": opts.get("data_root"), "data.gzs_protocol": opts.get("gzs_protocol"),
                 "eval.protocol": opts.get("protocol_given"), "device": opts.get("device"),
                 "output_dir": opts.get("output_dir") or "results/runs", "quiet": opts.get("quiet") or None,
                 "train.resume": False}
    return build_run_config(tree, {k: v for k, v in overrides.items() if v is not None})


@main.command("eval")
@click.option("--model", "model", help="A trained model: its run record (.json), run folder or model.json; scores "
                                       "the task given by --dataset/--setting/--split (default: its own).")
@click.option("--dataset", help="With --model: the dataset to evaluate on.")
@click.option("--setting", type=click.Choice(SETTINGS), help="With --model: the setting.")
@click.option("--split", help="With --model: the split id.")
@click.option("--split-file", type=click.Path(), help="With --model: a custom split file.")
@click.option("--data-root", type=click.Path(), help="With --model: where the dataset is.")
@click.option("--gzs-protocol", type=click.Choice(["sem-pcyc", "heldout"]), help="With --model: the GZS composition.")
@click.option("--pretrained", help="With --model: where the backbone weights are here (checked by SHA-256).")
@click.option("--allow-seen-classes", is_flag=True,
              help="With --model: evaluate although test classes were seen in training (the record says so).")
@click.option("--output-dir", type=click.Path(), help="With --model: where the record goes.  [default: results/runs]")
@click.option("--embeddings", "emb_path", type=click.Path(),
              help="A .npz with query, gallery and query_labels+gallery_labels and/or query_to_gallery.")
@click.option("--record", type=click.Path(), help="A run record (.json): score the embeddings it saved.")
@click.option("--json", "json_out", type=click.Path(), help="Write the result (metrics, per-class mAP, protocol) here.")
@config_option("--protocol", EvalConfig, "protocol", default="sbir-bench")
@click.option("--protocols", "presets", help="'all' or a comma-separated list of presets: every metric under each, "
                                             "side by side, with the spread between them.")
@protocol_options
@click.option("--eval-memory", default="1GiB", show_default=True, callback=lambda ctx, param, value: checked_memory(value),
              help="Memory budget for score blocks: a size (2GiB binary, 2GB decimal) or auto.")
@click.option("--backend", type=click.Choice(["exact", "faiss"]), default="exact", show_default=True,
              help="exact: every metric; faiss: top-K metrics only, for million-photo galleries.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def eval_command(model: Optional[str], emb_path: Optional[str], record: Optional[str], json_out: Optional[str],
                 protocol: str, presets: Optional[str], eval_memory: str, backend: str, device: str, quiet: bool,
                 **knobs: Any) -> None:
    """Evaluate saved embeddings (every run saves them) without re-encoding any image, or a trained
    model (--model) on any dataset, split or setting.

    \b
    Examples:
      sbir-bench eval --model results/runs/<run-id>.json --dataset tuberlin --setting zs --data-root ~/data/sbir
      sbir-bench eval --embeddings results/runs/<run-id>/embeddings.npz
      sbir-bench eval --record results/runs/<run-id>.json --protocols all
      sbir-bench eval --embeddings emb.npz --protocol sake --json metrics.json --quiet
      sbir-bench eval --embeddings emb.npz --normalization hits --interpolation none
      sbir-bench eval --embeddings huge.npz --backend faiss --map-k 200 --prec-k 200
    """
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..fileio import atomic_write_json, check_output_file
    from ..log import set_quiet
    from ..reporting.render import metrics_table, protocols_table
    from ..retrieval import evaluate_many
    from ..retrieval.npz_files import load_embeddings
    from ..training.distributed import local_device

    set_quiet(quiet)
    given = click.get_current_context().get_parameter_source("protocol") == click.core.ParameterSource.COMMANDLINE
    model_opts = {k: knobs.pop(k) for k in ("dataset", "setting", "split", "split_file", "data_root", "gzs_protocol",
                                            "pretrained", "allow_seen_classes", "output_dir")}
    if model:
        if emb_path or record or json_out or presets or backend != "exact" or knob_overrides(knobs):
            raise ConfigError("--model writes a run record under every preset; --embeddings, --record, --json, "
                              "--protocols, --backend and protocol knobs go with saved embeddings, not with --model")
        return _evaluate_model(model, model_opts, protocol if given else None, device, quiet)
    if any(v for v in model_opts.values()):
        raise ConfigError("--dataset, --setting, --split, --data-root, --pretrained and --output-dir go with --model")
    if json_out:
        check_output_file(json_out, "--json")
    path = _embeddings_path(emb_path, record)
    protocols = _protocols(protocol, presets, knob_overrides(knobs), given)
    data = load_embeddings(path)
    arrays = (data["query"], data["gallery"], data.get("query_labels"), data.get("gallery_labels"),
              data.get("query_to_gallery"))
    if backend == "faiss":
        # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
        from ..retrieval.faiss_topk import evaluate_topk
        results = [evaluate_topk(*arrays, protocol=p) for p in protocols]
    else:
        results = evaluate_many(*arrays, protocols=protocols, memory=eval_memory, device=local_device(device),
                                desc="evaluating", query_seen=data.get("query_seen"))
    _report(path, results, presets is not None, json_out, atomic_write_json, metrics_table, protocols_table)


def _evaluate_model(model: str, opts: Dict[str, Any], protocol: Optional[str], device: str, quiet: bool) -> None:
    """``eval --model``: rebuild the trained method from its artifact, score the asked task, write a record."""
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..artifacts import load_artifact
    from ..reporting.render import record_table
    from ..runner import evaluate_model
    artifact = load_artifact(model)
    cfg = model_config(artifact, {**opts, "protocol_given": protocol, "device": None if device == "auto" else device,
                                  "quiet": quiet})
    record = evaluate_model(cfg, artifact, opts["allow_seen_classes"], opts["pretrained"])
    if record.get("record_path"):
        click.echo(record_table(record))
        click.echo(f"model: {artifact.path}")
        click.echo(f"record: {record['record_path']}")


def _report(path: str, results: List[Any], side_by_side: bool, json_out: Optional[str], write_json, metrics_table,
            protocols_table) -> None:
    """Print one metrics table, or the protocols side by side; write --json."""
    first = results[0]
    if first.protocol.get("no_relevant") == "exclude_map":
        counted = f"{first.n_queries} queries ({first.n_excluded} without a relevant item: left out of mAP, 0 in P@K)"
    else:
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
