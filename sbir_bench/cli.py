"""The ``sbir-bench`` command line: one CLI over methods x datasets x settings (CLIP_benchmark-style).

Every command turns a :class:`~sbir_bench.errors.SbirError` into one line on stderr and exit code 2,
so a wrong path or flag never shows a stack trace.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import click

from .errors import SbirError

SETTING_CHOICES = ("zs", "gzs", "fg")


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def friendly_errors(fn: Callable) -> Callable:
    """Report user errors (and Ctrl-C) as one line instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SbirError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            click.echo("interrupted; rerun with --resume to continue from the last checkpoint", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="sbir-bench")
def main() -> None:
    """Train, evaluate and compare CLIP prompt-learning methods for zero-shot sketch-based image retrieval.

    \b
    Quick start (no downloads: the mini dataset is generated on first use):
      sbir-bench run zeroshot-clip --dataset mini --setting zs
      sbir-bench methods
      sbir-bench datasets
    """


# ---------------------------------------------------------------------------------------------- run
def _overrides(**opts: Any) -> Dict[str, Any]:
    """CLI options -> dotted config keys (None means "not given": YAML or defaults stand)."""
    mapping = {
        "dataset": "data.dataset", "setting": "data.setting", "split": "data.split", "split_file": "data.split_file",
        "data_root": "data.data_root", "workers": "data.workers", "max_per_class": "data.max_per_class",
        "backbone": "backbone.name", "pretrained": "backbone.pretrained", "cache_dir": "backbone.cache_dir",
        "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.lr",
        "checkpoint_dir": "train.checkpoint_dir", "eval_memory": "eval.memory",
        "device": "device", "output_dir": "output_dir", "variant": "variant",
    }
    out = {mapping[k]: v for k, v in opts.items() if k in mapping and v is not None}
    if opts.get("resume"):
        out["train.resume"] = True
    if opts.get("quiet"):
        out["quiet"] = True
    return out


@main.command("run", context_settings={"show_default": True})
@click.argument("method")
@click.option("--dataset", help="Dataset name (see `sbir-bench datasets`).  [default: mini]")
@click.option("--setting", type=click.Choice(SETTING_CHOICES), help="zs, gzs or fg.  [default: zs]")
@click.option("--split", help="Official zero-shot split id (sketchy: 1 or 2).  [default: 1]")
@click.option("--split-file", type=click.Path(), help="Custom split: a file with one unseen class name per line.")
@click.option("--data-root", type=click.Path(), help="Folder holding the dataset (default: $SBIR_BENCH_DATA or ~/data/sbir).")
@click.option("--backbone", help="open_clip model name, e.g. ViT-B-32.  [default: sbir-tiny]")
@click.option("--pretrained", help="open_clip tag (e.g. openai) or a local checkpoint PATH.")
@click.option("--cache-dir", type=click.Path(), help="Where open_clip weights are cached.")
@click.option("--seed", "seeds", type=int, multiple=True, help="Random seed; repeat for several runs.  [default: 0]")
@click.option("--variant", help="Label for an ablation or variant (its own row in `compare`).")
@click.option("--epochs", type=int, help="Training epochs (ignored by methods that do not train).")
@click.option("--batch-size", type=int, help="Global training batch size.")
@click.option("--lr", type=float, help="Learning rate.")
@click.option("--device", help="auto, cpu, cuda or cuda:N.")
@click.option("--workers", type=int, help="DataLoader worker processes.")
@click.option("--max-per-class", type=int, help="Cap images per class (quick experiments).")
@click.option("--eval-memory", help="Memory budget of the evaluation engine, e.g. 2GiB.")
@click.option("--output-dir", type=click.Path(), help="Where records go.  [default: results/runs]")
@click.option("--checkpoint-dir", type=click.Path(), help="Where training checkpoints go.")
@click.option("--resume", is_flag=True, help="Continue training from the last checkpoint of this run.")
@click.option("--config", "config_file", type=click.Path(), help="YAML file with a (partial) run config.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set method_config.n_ctx=8 --set train.warmup_epochs=1.")
@click.option("--quiet", is_flag=True, help="No progress bars or info lines.")
@friendly_errors
def run_command(method: str, seeds: Sequence[int], config_file: Optional[str], sets: Sequence[str],
                **opts: Any) -> None:
    """Train (if the method trains) and evaluate METHOD; write a JSON record and print its metrics.

    \b
    Examples:
      sbir-bench run zeroshot-clip --dataset mini --setting zs
      sbir-bench run zeroshot-clip --dataset sketchy --split 2 --setting gzs --data-root ~/data/sbir \\
          --backbone ViT-B-32 --pretrained openai
      sbir-bench run coop --dataset mini --setting gzs --epochs 3 --seed 0 --seed 1 --seed 2
      sbir-bench run splip --dataset quickdraw --setting gzs --data-root ~/data/sbir --resume
      sbir-bench run splip --config configs/mini/splip.yaml --set method_config.jigsaw=false --variant no-jigsaw
    """
    from .config import build_run_config, load_yaml, parse_override
    from .reporting.tables import record_table
    from .runner import run

    file_data = load_yaml(config_file) if config_file else {}
    overrides = _overrides(**opts)
    overrides["method"] = method
    for text in sets:
        key, value = parse_override(text)
        overrides[key] = value
    for seed in seeds or [None]:
        if seed is not None:
            overrides["seed"] = seed
        cfg = build_run_config(file_data, overrides)
        record = run(cfg)
        click.echo(record_table(record))
        if record.get("record_path"):
            click.echo(f"record: {record['record_path']}")


# --------------------------------------------------------------------------------------------- eval
@main.command("eval", context_settings={"show_default": True})
@click.option("--embeddings", "emb_path", required=True, type=click.Path(),
              help="A .npz with query, gallery and query_labels+gallery_labels or query_to_gallery.")
@click.option("--json", "json_out", type=click.Path(), help="Write the result (metrics, per-class mAP, protocol) here.")
@click.option("--map-k", default="200", help="Comma-separated K for mAP@K.")
@click.option("--prec-k", default="100,200", help="Comma-separated K for P@K.")
@click.option("--acc-k", default="1,5,10", help="Comma-separated K for Acc@K (instance level).")
@click.option("--interpolation", type=click.Choice(["voc", "none"]), default="voc", help="AP@K interpolation.")
@click.option("--all-interpolation", type=click.Choice(["none", "voc"]), default="none",
              help="mAP@all interpolation: none (= sklearn, torchmetrics) or voc (SAKE).")
@click.option("--normalization", type=click.Choice(["min_k_r", "hits", "r"]), default="min_k_r",
              help="AP@K divisor: min(K, #relevant) (SAKE), hits in top K (torchmetrics) or #relevant.")
@click.option("--ties", type=click.Choice(["grouped", "stable", "optimistic", "pessimistic"]), default="grouped",
              help="How tied scores are ranked for top-K metrics.")
@click.option("--average", type=click.Choice(["query", "class"]), default="query", help="Average over queries or classes.")
@click.option("--eval-memory", default="1GiB", help="Memory budget for score blocks.")
@click.option("--backend", type=click.Choice(["exact", "faiss"]), default="exact",
              help="exact: every metric; faiss: top-K metrics only, for million-photo galleries.")
@click.option("--device", default="auto", help="auto, cpu or cuda.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def eval_command(emb_path: str, json_out: Optional[str], map_k: str, prec_k: str, acc_k: str, interpolation: str,
                 all_interpolation: str, normalization: str, ties: str, average: str, eval_memory: str, backend: str,
                 device: str, quiet: bool) -> None:
    """Evaluate saved embeddings (every run saves them) without re-encoding any image.

    \b
    Examples:
      sbir-bench eval --embeddings results/runs/<run-id>/embeddings.npz
      sbir-bench eval --embeddings emb.npz --json metrics.json --map-k 100,200 --quiet
      sbir-bench eval --embeddings emb.npz --normalization hits --interpolation none   # torchmetrics convention
      sbir-bench eval --embeddings huge.npz --backend faiss --map-k 200 --prec-k 200
    """
    from .engine.distributed import local_device
    from .progress import set_quiet
    from .records import atomic_write_json
    from .reporting.tables import metrics_table
    from .retrieval import Protocol, evaluate
    from .retrieval.embeddings import load_embeddings

    set_quiet(quiet)
    protocol = Protocol(map_k=_ks(map_k), prec_k=_ks(prec_k), acc_k=_ks(acc_k), topk_interpolation=interpolation,
                        all_interpolation=all_interpolation, topk_normalization=normalization, ties=ties, average=average)
    data = load_embeddings(emb_path)
    arrays = (data["query"], data["gallery"], data.get("query_labels"), data.get("gallery_labels"),
              data.get("query_to_gallery"))
    if backend == "faiss":
        from .retrieval.faiss_topk import evaluate_topk
        result = evaluate_topk(*arrays, protocol=protocol)
    else:
        result = evaluate(*arrays, protocol=protocol, memory=eval_memory, device=local_device(device), desc="evaluating")
    payload = {"embeddings": str(emb_path), **result.to_json()}
    if json_out:
        atomic_write_json(json_out, payload)
    click.echo(metrics_table(result.metrics, f"{result.n_queries - result.n_excluded} queries "
                                             f"({result.n_excluded} without a relevant item excluded)"))


def _ks(text: str) -> tuple:
    """'100,200' -> (100, 200), with a clear error for anything else."""
    try:
        return tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise SbirError(f"cut-offs must be comma-separated integers, got {text!r}") from None


# ------------------------------------------------------------------------------------------ methods
@main.command("methods")
@friendly_errors
def methods_command() -> None:
    """List registered methods (built-in and from installed plug-in packages).

    \b
    Example:
      sbir-bench methods
    """
    from .methods import METHODS, load_builtin_methods

    load_builtin_methods()
    names = METHODS.names()
    width = max(len(n) for n in names)
    for name in names:
        cls = METHODS.get(name)
        kind = "trains" if cls.trainable else "no training"
        click.echo(f"{name:<{width}}  [{kind}]  {cls.description}")


@main.command("backbones")
@click.option("--pretrained", "with_tags", is_flag=True, help="Also list each model's open_clip pretrained tags.")
def backbones_command(with_tags: bool) -> None:
    """List the open_clip model names usable with --backbone (bundled sbir-tiny included).

    \b
    Example:
      sbir-bench backbones --pretrained | grep ViT-B
    """
    import open_clip

    from .models import list_backbones

    for name in list_backbones():
        tags = open_clip.list_pretrained_tags_by_model(name) if with_tags else []
        click.echo(f"{name}  {', '.join(tags)}" if tags else name)


# ----------------------------------------------------------------------------------------- datasets
@main.group("datasets", invoke_without_command=True)
@click.option("--data-root", type=click.Path(), help="Where to look (default: $SBIR_BENCH_DATA or ~/data/sbir).")
@click.pass_context
@friendly_errors
def datasets_group(ctx: click.Context, data_root: Optional[str]) -> None:
    """List datasets, where each is looked for, and whether it is present.

    \b
    Examples:
      sbir-bench datasets
      sbir-bench datasets --data-root /data/sbir
      sbir-bench datasets check --dataset sketchy --data-root /data/sbir
    """
    if ctx.invoked_subcommand is not None:
        return
    from .data.catalog import DATASETS, candidate_dirs, locate
    from .data.mini import default_mini_root

    for name, spec in DATASETS.items():
        if name == "mini":
            root = default_mini_root()
            status = "present" if (root / "VERSION").is_file() else "generated on first use"
            click.echo(f"{name:<11} {spec.title:<30} {status:<24} {root}")
            continue
        try:
            base, _ = locate(spec, data_root)
            status, where = "present", str(base)
        except SbirError:
            status, where = "missing", " | ".join(str(p) for p in dict.fromkeys(candidate_dirs(spec, data_root)))
        click.echo(f"{name:<11} {spec.title:<30} {status:<24} {where}")


@datasets_group.command("check")
@click.option("--dataset", required=True, help="Dataset name.")
@click.option("--data-root", type=click.Path(), help="Folder holding the dataset.")
@click.option("--split", default="1", show_default=True, help="Split whose class names must exist.")
@click.option("--split-file", type=click.Path(), help="Custom split file to check instead.")
@click.option("--no-decode", is_flag=True, help="Skip decoding every image (faster, misses corrupt files).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def datasets_check(dataset: str, data_root: Optional[str], split: str, split_file: Optional[str], no_decode: bool,
                   quiet: bool) -> None:
    """Walk a dataset copy and report what is missing, empty, unreadable or duplicated.

    Exits non-zero when the copy is unusable for the requested split.

    \b
    Example:
      sbir-bench datasets check --dataset tuberlin --data-root /data/sbir
    """
    from .data.check import check_dataset
    from .progress import set_quiet

    set_quiet(quiet)
    report = check_dataset(dataset, data_root, split, split_file, decode=not no_decode)
    for line in report.lines():
        click.echo(line)
    if not report.usable:
        _fail(report.summary())
    click.echo(report.summary())

# ---------------------------------------------------------------------------------------- reporting
def _selection_options(fn: Callable) -> Callable:
    """Options shared by compare / export / plot: which records, which subset."""
    for option in reversed([
        click.argument("patterns", nargs=-1),
        click.option("--results-dir", default="results/runs", show_default=True, type=click.Path(),
                     help="Where records are read from when no RUN_GLOB is given."),
        click.option("--dataset", "datasets", multiple=True, help="Keep only this dataset (repeatable)."),
        click.option("--setting", "settings", multiple=True, help="Keep only this setting (repeatable)."),
        click.option("--method", "methods", multiple=True, help="Keep only this method (repeatable)."),
    ]):
        fn = option(fn)
    return fn


def _table_options(fn: Callable) -> Callable:
    for option in reversed([
        click.option("--reference", help="'paper' (results/paper/*.csv) or a folder of reference CSVs: adds "
                                         "published rows and a delta column."),
        click.option("--against", help="Add a p-value column: paired permutation test of every method vs this one."),
        click.option("--ci", is_flag=True, help="Add 95% bootstrap confidence intervals over queries."),
        click.option("--digits", default=3, show_default=True, help="Decimals shown."),
    ]):
        fn = option(fn)
    return fn


def _cells(patterns, results_dir, datasets, settings, methods, reference, against, ci):
    from .reporting.collect import runs_frame
    from .reporting.compare import compare, load_reference

    frame = runs_frame(patterns, results_dir, datasets, settings, methods)
    if frame.empty:
        raise SbirError(f"no run records found in {' '.join(patterns) or results_dir}; run `sbir-bench run` first")
    ref = None
    if reference:
        folder = Path("results/paper") if reference == "paper" else Path(reference)
        ref = load_reference(folder)
    return compare(frame, ref, against, ci)


@main.command("compare")
@_selection_options
@_table_options
@friendly_errors
def compare_command(patterns, results_dir, datasets, settings, methods, reference, against, ci, digits) -> None:
    """Gather run records into one table: mean ± std over seeds (number of seeds in brackets).

    \b
    Examples:
      sbir-bench compare
      sbir-bench compare 'results/runs/*mini*.json' --setting gzs --ci
      sbir-bench compare --dataset sketchy --reference paper
      sbir-bench compare --against zeroshot-clip
    """
    from .reporting.render import to_text

    click.echo(to_text(_cells(patterns, results_dir, datasets, settings, methods, reference, against, ci), digits))


@main.command("export")
@_selection_options
@_table_options
@click.option("--format", "fmt", type=click.Choice(["latex", "markdown", "csv"]), default="latex", show_default=True)
@click.option("--output", "-o", type=click.Path(), help="Write to this file (atomically) instead of stdout.")
@click.option("--caption", default="", help="LaTeX caption.")
@friendly_errors
def export_command(patterns, results_dir, datasets, settings, methods, reference, against, ci, digits, fmt, output,
                   caption) -> None:
    """Export the comparison table as LaTeX (booktabs), Markdown or CSV; same runs give the same bytes.

    \b
    Examples:
      sbir-bench export --format latex -o table.tex
      sbir-bench export --format markdown --setting zs
      sbir-bench export --format csv -o results.csv
    """
    from .records import atomic_write_bytes
    from .reporting.render import to_csv, to_latex, to_markdown

    cells = _cells(patterns, results_dir, datasets, settings, methods, reference, against, ci)
    text = {"latex": lambda: to_latex(cells, digits, caption), "markdown": lambda: to_markdown(cells, digits),
            "csv": lambda: to_csv(cells)}[fmt]()
    if output:
        atomic_write_bytes(output, text.encode())
        click.echo(f"wrote {output}")
    else:
        click.echo(text, nl=False)


@main.command("plot")
@_selection_options
@click.option("--kind", type=click.Choice(["pr", "per-class", "grid", "all"]), default="all", show_default=True)
@click.option("--output-dir", default="results/plots", show_default=True, type=click.Path())
@click.option("--queries", default=4, show_default=True, help="Rows of the retrieval grid.")
@click.option("--top-k", default=8, show_default=True, help="Photos per row of the retrieval grid.")
@friendly_errors
def plot_command(patterns, results_dir, datasets, settings, methods, kind, output_dir, queries, top_k) -> None:
    """Draw PR curves (one per method, per dataset/setting), per-class AP bars and retrieval grids (PNG + PDF).

    \b
    Examples:
      sbir-bench plot
      sbir-bench plot --kind grid --method splip --queries 6 --top-k 10
      sbir-bench plot 'results/runs/*gzs*.json' --kind pr --output-dir figures
    """
    import json

    from .reporting.collect import runs_frame
    from .reporting.plots import plot_per_class_ap, plot_pr_curves, plot_retrieval_grid

    frame = runs_frame(patterns, results_dir, datasets, settings, methods)
    frame = frame[frame["embeddings"] != ""] if not frame.empty else frame
    if frame.empty:
        raise SbirError("no run records with saved embeddings to plot")
    out = Path(output_dir)
    written: List[Path] = []
    for (dataset, split, setting), block in frame.groupby(["dataset", "split", "setting"], sort=True):
        tag = f"{dataset}_split{split}_{setting}"
        latest = block.drop_duplicates("method", keep="last")  # one curve per method: its last seed
        if kind in ("pr", "all") and setting != "fg":
            written += plot_pr_curves([(m, e) for m, e in zip(latest["method"], latest["embeddings"])], out / f"pr_{tag}")
        for _, run in latest.iterrows():
            stem = f"{run['method']}_{tag}_seed{run['seed']}"
            if kind in ("per-class", "all") and setting != "fg":
                written += plot_per_class_ap(json.loads(Path(run["record"]).read_text()), out / f"per_class_{stem}")
            if kind in ("grid", "all"):
                written += plot_retrieval_grid(run["embeddings"], out / f"grid_{stem}", queries, top_k)
    for path in written:
        click.echo(f"wrote {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
