"""``sbir-bench run``: train (if the method trains) and evaluate one method, one record per seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click

from ..config import SELECTIONS, TEST_SELECTED, BackboneConfig, DataConfig, EvalConfig, RunConfig, TrainConfig
from ..data.tasks import SETTINGS
from ..errors import ConfigError, DataError, SbirError
from ..gpus import DEFAULT_GPU, GPUS, usable_memory
from ..launchers import (
    CELLS,
    LAUNCHERS,
    LaunchRequest,
    launcher_for,
    launcher_options,
    planned_configs,
    status_lines,
)
from . import main
from .common import config_option, fail, friendly_errors, split_list

# (flag, config class, field, dotted key): the run options, their types and help all come from the configs
RUN_OPTIONS: List[Tuple[str, Any, str, str]] = [
    ("--dataset", DataConfig, "dataset", "data.dataset"),
    ("--setting", DataConfig, "setting", "data.setting"),
    ("--split", DataConfig, "split", "data.split"),
    ("--split-file", DataConfig, "split_file", "data.split_file"),
    ("--data-root", DataConfig, "data_root", "data.data_root"),
    ("--gzs-protocol", DataConfig, "gzs_protocol", "data.gzs_protocol"),
    ("--backbone", BackboneConfig, "name", "backbone.name"),
    ("--pretrained", BackboneConfig, "pretrained", "backbone.pretrained"),
    ("--cache-dir", BackboneConfig, "cache_dir", "backbone.cache_dir"),
    ("--variant", RunConfig, "variant", "variant"),
    ("--epochs", TrainConfig, "epochs", "train.epochs"),
    ("--batch-size", TrainConfig, "batch_size", "train.batch_size"),
    ("--lr", TrainConfig, "lr", "train.lr"),
    ("--device", RunConfig, "device", "device"),
    ("--workers", DataConfig, "workers", "data.workers"),
    ("--max-per-class", DataConfig, "max_per_class", "data.max_per_class"),
    ("--protocol", EvalConfig, "protocol", "eval.protocol"),
    ("--eval-memory", EvalConfig, "memory", "eval.memory"),
    ("--output-dir", RunConfig, "output_dir", "output_dir"),
    ("--checkpoint-dir", TrainConfig, "checkpoint_dir", "train.checkpoint_dir"),
    ("--memory-budget", TrainConfig, "memory_budget", "train.memory_budget"),
    ("--report-to", RunConfig, "report_to", "report_to"),
    ("--tracking-uri", RunConfig, "tracking_uri", "tracking_uri"),
]


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def run_options(fn):
    """The options of RUN_OPTIONS, in order."""
    for flag, cls, name, _ in reversed(RUN_OPTIONS):
        fn = config_option(flag, cls, name, dest=_dest(flag))(fn)
    return fn


def overrides_from_options(opts: Dict[str, Any]) -> Dict[str, Any]:
    """CLI options -> dotted config keys (None means "not given": YAML or defaults stand)."""
    out = {key: opts[_dest(flag)] for flag, _, _, key in RUN_OPTIONS if opts.get(_dest(flag)) is not None}
    for flag, key, value in (("resume", "train.resume", True), ("quiet", "quiet", True),
                             ("no_cache", "eval.feature_cache", False)):
        if opts.get(flag):
            out[key] = value
    return out


def resolve_configs(method: str, config_file: Optional[str], sets: Sequence[str], seeds: Sequence[int],
                    opts: Dict[str, Any]) -> List[RunConfig]:
    """One validated config per seed (all checked before the first run starts)."""
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..config import build_run_config, load_yaml, parse_override
    from ..locations import find_config
    check_distinct_seeds(seeds, "--seed")
    file_data = load_yaml(find_config(config_file)) if config_file else {}
    overrides = {**overrides_from_options(opts), "method": method}
    for text in sets:
        key, value = parse_override(text)
        overrides[key] = value
    return [build_run_config(file_data, {**overrides, **({"seed": s} if s is not None else {})})
            for s in (seeds or [None])]


def check_distinct_seeds(seeds: Sequence[int], option: str) -> None:
    """One line if a seed is given twice: two records of one seed are one measurement, not two."""
    repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if repeated:
        raise ConfigError(f"{option}: seed {', '.join(map(str, repeated))} is given more than once; each seed "
                          f"is one measurement, so give distinct seeds")


def parse_seed_list(text: str) -> List[int]:
    """``"0,1,2"`` -> [0, 1, 2]; empty, non-integer, negative or repeated seeds are one-line errors."""
    try:
        seeds = [int(s) for s in split_list(text)]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds must list one or more integers >= 0, got {text!r}")
    check_distinct_seeds(seeds, "--seeds")
    return seeds


def estimate_options(fn):
    """``--dry-run``'s estimate options (sbir_bench.sizing)."""
    for option in reversed([
        click.option("--dry-run", is_flag=True, help="Print what each run needs and costs (memory, micro-batch, FLOPs, "
                                                    "GPU-hours), counted on the meta device; run nothing."),
        click.option("--gpu", type=click.Choice(list(GPUS)), help="The GPU the estimate is for (docs/cluster.md lists "
                                                                  "the assumptions); also sets the memory budget.  "
                                                                  "[default with --dry-run: a100-80gb]"),
        click.option("--json", "json_file", type=click.Path(), help="With --dry-run: write the estimates here."),
    ]):
        fn = option(fn)
    return fn


def check_estimate_options(dry_run: bool, gpu: Optional[str], json_file: Optional[str]) -> None:
    """--json goes with --dry-run; an unwritable --json file is refused before any work."""
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..fileio import check_output_file
    if json_file and not dry_run:
        raise ConfigError("--json writes the estimates of --dry-run; add --dry-run")
    if json_file:
        check_output_file(json_file)


def print_estimates(labelled: Sequence[Tuple[str, str, Any]], gpu: Optional[str], json_file: Optional[str]) -> None:
    """One line per (printed label, run id, config): the label, then its estimate; with ``json_file``
    written there too, by run id (identical trainings and datasets are traced once)."""
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..fileio import atomic_write_json
    from ..runner import estimate_run
    out: List[Dict[str, Any]] = []
    refused: List[SbirError] = []
    for label, run_id, cfg in labelled:
        try:
            est = estimate_run(cfg, gpu or DEFAULT_GPU)
        except SbirError as exc:  # this run does not fit (or cannot be sized): mark it, size the others
            refused.append(exc)
            click.echo(f"{label}  |  refused: {exc}")
            out.append({"run": run_id, "refused": str(exc)})
            continue
        click.echo(f"{label}  |  {est.line()}")
        out.append({"run": run_id, **est.to_dict()})
    if json_file:
        atomic_write_json(json_file, out)
        click.echo(f"estimates: {json_file}")
    if refused:  # the exit code says what kind: the first one's (docs/errors.md)
        fail(f"{len(refused)} of {len(labelled)} run(s) refused (marked above)", refused[0].exit_code)


@main.command("run")
@click.argument("method")
@run_options
@click.option("--seed", "seeds", type=click.IntRange(min=0), multiple=True,
              help="Random seed; repeat for several runs.  [default: 0]")
@click.option("--resume", is_flag=True, help="Continue training from the last checkpoint of this run.")
@click.option("--no-cache", is_flag=True, help="Do not read or write the frozen-feature cache.")
@click.option("--config", "config_file", type=click.Path(), help="YAML file with a (partial) run config, or a shipped recipe by name "
              "(e.g. paper/zs/tuberlin/splip; `sbir-bench recipes` lists them).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set method_config.n_ctx=8 --set train.warmup_epochs=1.")
@click.option("--quiet", is_flag=True, help="No progress bars or info lines.")
@estimate_options
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
      sbir-bench run zeroshot-clip --protocol sem-pcyc --set eval.protocol_overrides.ties=stable
      sbir-bench run splip --dataset tuberlin --dry-run --gpu rtx4090-24gb
    """
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..log import set_quiet
    from ..reporting.render import record_table
    from ..runner import run

    dry_run, gpu, json_file = opts.pop("dry_run"), opts.pop("gpu"), opts.pop("json_file")
    check_estimate_options(dry_run, gpu, json_file)
    if gpu and not dry_run and opts.get("memory_budget") is None:  # --gpu sets the budget micro-batches plan for
        opts["memory_budget"] = str(usable_memory(gpu))
    configs = resolve_configs(method, config_file, sets, seeds, opts)
    set_quiet(any(cfg.quiet for cfg in configs))  # --quiet, or `quiet: true` in the YAML
    if dry_run:
        print_estimates([(f"{method} seed {cfg.seed}",) * 2 + (cfg,) for cfg in configs], gpu, json_file)
        return
    for cfg in configs:
        record = run(cfg)
        if record.get("record_path"):
            click.echo(record_table(record))
            click.echo(f"record: {record['record_path']}")


def cluster_options(fn):
    """``reproduce``'s launcher choice, then every launcher's own options (each declares them:
    sbir_bench.launchers), then the table's status and collect switches."""
    options = [click.option("--launcher", type=click.Choice(list(LAUNCHERS)), default="local", show_default=True,
                            help="local: this machine; slurm: one SLURM job per cell through submitit; "
                                 "submitit-local: the same job path as local subprocesses.")]
    for o in launcher_options():
        extra: Dict[str, Any] = {"is_flag": True} if o.is_flag else {"multiple": True} if o.multiple else \
            {"default": o.default, "show_default": o.default is not None, "type": o.type}
        options.append(click.option(o.flag, o.dest, help=o.help, **extra))
    options += [click.option("--status", is_flag=True, help="One line per cell: done, running, pending, failed or "
                                                          "missing data."),
                click.option("--collect", is_flag=True, help="Write the table from whatever cells have finished.")]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command("reproduce")
@click.argument("table", type=click.Choice(SETTINGS))
@click.option("--dataset", "datasets", multiple=True,
              help="Only these cells (e.g. sketchy-split2, tuberlin), or 'mini' for the mini-set recipes.")
@click.option("--method", "methods", multiple=True, help="Only these methods (repeatable).")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds of every cell.")
@click.option("--data-root", type=click.Path(), help="Folder holding the datasets.")
@click.option("--output-dir", type=click.Path(), help="Where runs and tables go.  [default: results/reproduce/TABLE]")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any config key of every run.")
@click.option("--memory-budget", help="Memory a step may plan for per process, e.g. 24GiB (train.memory_budget).")
@click.option("--select-on", "selection", type=click.Choice(SELECTIONS), default="recipe", show_default=True,
              help="What chooses each trained cell's kept epoch: the recipe's; validation or test (early stopping, "
                   "patience 2, where the recipe has none); both: each cell both ways, and selection_TABLE.md says "
                   "what test-set selection buys.")
@estimate_options
@cluster_options
@click.option("--quiet", is_flag=True, help="No progress bars or info lines.")
@friendly_errors
def reproduce_command(table: str, datasets, methods, seeds: str, data_root: Optional[str], output_dir: Optional[str],
                      sets, memory_budget: Optional[str], selection: str, dry_run: bool, gpu: Optional[str],
                      json_file: Optional[str], quiet: bool, **cluster: Any) -> None:
    """Run every cell of one of SpLIP's tables (methods x datasets x seeds) and write the table with the
    literature's rows and deltas to the paper. Finished cells are kept, interrupted ones resume, and a
    cell whose dataset or weights are absent is skipped with one line saying what is missing. Cells run
    here one after another, N at a time (--jobs), or as SLURM jobs (--launcher slurm; docs/cluster.md).

    \b
    Examples:
      sbir-bench reproduce zs --dry-run --data-root ~/data/sbir
      sbir-bench reproduce zs --dataset mini
      sbir-bench reproduce gzs --data-root ~/data/sbir --seeds 0,1,2 --jobs 4
      sbir-bench reproduce zs --launcher slurm --partition gpu --time 720 --data-root /shared/sbir --seeds 0,1,2
      sbir-bench reproduce zs --status
      sbir-bench reproduce fg --method splip --method zeroshot-clip --data-root ~/data/sbir
      sbir-bench reproduce zs --dataset mini --select-on both
    """
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..config import parse_override
    from ..fileio import check_output_dir
    from ..log import set_quiet
    from ..reporting.tables import write_table
    from ..reproduce import cells, plan

    set_quiet(quiet)
    check_estimate_options(dry_run, gpu, json_file)
    seed_list = parse_seed_list(seeds)
    launcher = launcher_for(cluster["launcher"], cluster)  # its options checked before any work
    folder = Path(output_dir or f"results/reproduce/{table}")
    if (cluster["status"] or cluster["collect"]) and not (folder / CELLS).is_dir():
        what = "--status" if cluster["status"] else "--collect"
        raise DataError(f"{what}: {folder} holds no reproduce cells ({CELLS}/ is absent): nothing was run or submitted "
                        f"there" + ("" if cluster["status"] else "; `sbir-bench export` tabulates plain run records"))
    out = Path(check_output_dir(str(folder)))
    overrides = dict(parse_override(t) for t in sets)
    if data_root:
        overrides["data.data_root"] = data_root
    if quiet:
        overrides["quiet"] = True
    if memory_budget or (gpu and not dry_run):
        overrides["train.memory_budget"] = memory_budget or str(usable_memory(gpu))
    runs = plan(cells(table, datasets, methods), seed_list, out, overrides, network=not dry_run, selection=selection)
    if cluster["status"]:
        for line in status_lines(runs, out):
            click.echo(line)
        return
    if cluster["collect"]:
        click.echo(f"wrote {', '.join(str(p) for p in write_table(table, out, planned_configs(runs)).values())}")
        return
    if dry_run:  # one line per cell: what it needs and would do, then what it costs
        for p in runs:
            if p.status.startswith("refused"):
                click.echo(f"skip {p.describe()}")
        print_estimates([(f"{'skip ' if p.skipped else ''}{p.describe()}",
                          f"{p.cell.setting}/{p.cell.name} {p.cell.method} seed {p.seed}", p.cfg) for p in runs
                         if not p.status.startswith("refused")], gpu, json_file)
    else:
        for planned in runs:
            if planned.skipped:
                click.echo(f"skip {planned.describe()}")
        _launch(table, runs, out, launcher, selection == "both")


def _launch(table: str, runs, out, launcher, both_selections: bool = False) -> None:
    """Run or submit the runnable cells through the chosen launcher, then write the table (unless jobs
    are still out) and report failures."""
    # pandas and scipy: imported when a table is written, not for `sbir-bench --help`
    from ..reporting.tables import write_table
    if all(p.skipped for p in runs):
        fail(f"nothing to run: all {len(runs)} run(s) lack their dataset or weights, or their method does not run "
             f"there (listed above)", 3)
    outcome = launcher.launch(runs, LaunchRequest(table, out))
    for line in outcome.submitted:
        click.echo(line)
    if outcome.pending:
        click.echo(f"{len(outcome.submitted)} job(s) submitted; `sbir-bench reproduce {table} --status` follows them, "
                   f"and the table is written when the last one ends")
    elif any(not p.skipped for p in runs):
        try:
            written = list(write_table(table, out, planned_configs(runs)).values())
            if both_selections:  # pandas again: imported with the table
                from ..reporting.selection import write_inflation
                written += write_inflation(table, out, TEST_SELECTED, planned_configs(runs))
                click.echo(written[-1].read_text())
            click.echo(f"wrote {', '.join(str(p) for p in written)}")
        except SbirError as exc:  # every cell failed: the failures below say why
            click.echo(f"no table: {exc}", err=True)
    for where, exc in outcome.failures:
        click.echo(f"failed: {where}: {exc}", err=True)
    if outcome.failures:  # the exit code says what kind of failure: the first one's (docs/errors.md)
        fail(f"{len(outcome.failures)} run(s) failed; the table holds the others", outcome.failures[0][1].exit_code)
