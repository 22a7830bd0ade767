"""What is there: ``methods``, ``backbones``, ``datasets`` (and ``datasets check``), ``cache``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from ..errors import ConfigError, DataError, SbirError
from . import main
from .common import fail, friendly_errors


@main.command("methods")
@friendly_errors
def methods_command() -> None:
    """List registered methods (built-in and from installed plug-in packages).

    \b
    Example:
      sbir-bench methods
    """
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..plugins import METHODS

    names = METHODS.names()
    width = max(len(n) for n in names)
    for name in names:
        cls = METHODS.get(name)
        kind = "trains" if cls.trainable else "no training"
        click.echo(f"{name:<{width}}  [{kind}]  {cls.description}")


@main.command("recipes")
@click.argument("prefix", required=False, default="")
@friendly_errors
def recipes_command(prefix: str) -> None:
    """List the shipped recipes, by the name `--config` takes (optionally those under PREFIX).

    \b
    Examples:
      sbir-bench recipes
      sbir-bench recipes paper/zs/tuberlin
      sbir-bench run splip --config paper/zs/tuberlin/splip --data-root ~/data/sbir
    """
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..locations import recipes_folder

    root = recipes_folder()
    names = [n for n in (p.relative_to(root).with_suffix("").as_posix() for p in sorted(root.rglob("*.yaml")))
             if n.startswith(prefix.strip("/"))]
    if not names:
        raise ConfigError(f"no shipped recipe starts with {prefix!r}; `sbir-bench recipes` lists them all")
    click.echo("\n".join(names))


@main.command("backbones")
@click.option("--pretrained", "with_tags", is_flag=True, help="Also list each model's open_clip pretrained tags.")
def backbones_command(with_tags: bool) -> None:
    """List the open_clip model names usable with --backbone (bundled sbir-tiny included).

    \b
    Example:
      sbir-bench backbones --pretrained | grep ViT-B
    """
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    import open_clip

    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..models import list_backbones

    for name in list_backbones():
        tags = open_clip.list_pretrained_tags_by_model(name) if with_tags else []
        click.echo(f"{name}  {', '.join(tags)}" if tags else name)


@main.group("datasets", invoke_without_command=True)
@click.option("--data-root", type=click.Path(), help="Where to look (default: $SBIR_BENCH_DATA or ~/data/sbir).")
@click.pass_context
@friendly_errors
def datasets_group(ctx: click.Context, data_root: Optional[str]) -> None:
    """List datasets (built-in and plug-ins), where each is looked for, and whether it is present.

    \b
    Examples:
      sbir-bench datasets
      sbir-bench datasets --data-root /data/sbir
      sbir-bench datasets check --dataset sketchy --data-root /data/sbir
    """
    if ctx.invoked_subcommand is not None:
        return
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..data.discovery import candidate_dirs, locate
    from ..plugins import DATASETS

    for name, spec in DATASETS.items():
        if spec.shipped_at is not None and data_root is None:
            root = spec.shipped_at()
            status = "present" if (root / "VERSION").is_file() else "shipped; unpacked on first use"
            click.echo(f"{name:<14} {spec.title:<44} {status:<24} {root}")
            continue
        try:
            base, _ = locate(spec, data_root)
            status, where = "present", str(base)
        except SbirError:
            status, where = "missing", " | ".join(str(p) for p in dict.fromkeys(candidate_dirs(spec, data_root)))
        click.echo(f"{name:<14} {spec.title:<44} {status:<24} {where}")


@datasets_group.command("check")
@click.option("--dataset", required=True, help="Dataset name.")
@click.option("--data-root", type=click.Path(), help="Folder holding the dataset.")
@click.option("--split", default="1", show_default=True, help="Split whose class names must exist.")
@click.option("--split-file", type=click.Path(), help="Custom split file to check instead.")
@click.option("--deep", is_flag=True, help="Decode every image and compare file contents (reads the whole copy).")
@click.option("--no-decode", is_flag=True, help="Decode nothing (by default a sample of 200 images per modality).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def datasets_check(dataset: str, data_root: Optional[str], split: str, split_file: Optional[str], deep: bool,
                   no_decode: bool, quiet: bool) -> None:
    """Walk a dataset copy and report what is missing, empty, unreadable or duplicated, then the test
    task every split and setting builds (queries x photos, GZS's seen and unseen parts).

    Exits non-zero (3) when the copy is unusable for the requested split.

    \b
    Example:
      sbir-bench datasets check --dataset tuberlin --data-root /data/sbir
    """
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..data.check import check_dataset, task_sizes
    from ..log import set_quiet

    set_quiet(quiet)
    if deep and no_decode:
        fail("--deep and --no-decode contradict each other: choose one", 2)
    report = check_dataset(dataset, data_root, split, split_file, depth="deep" if deep else "none" if no_decode
                           else "sample")
    for line in report.lines():
        click.echo(line)
    if not report.usable:
        fail(report.summary(), DataError.exit_code)
    for line in task_sizes(dataset, data_root, split_file):
        click.echo(line)
    click.echo(report.summary())


@datasets_group.command("fetch")
@click.argument("name")
@click.option("--data-root", type=click.Path(), help="Folder the dataset goes under (default: $SBIR_BENCH_DATA or "
                                                     "~/data/sbir); archives are kept in its downloads/.")
@click.option("--mirror", metavar="URL", help="Read every file from URL/<file name> instead of its public source.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def datasets_fetch(name: str, data_root: Optional[str], mirror: Optional[str], quiet: bool) -> None:
    """Download a dataset as its papers' download scripts do, resuming an interrupted transfer, check
    sizes and checksums (recording one where none is published), unpack it into the layout `datasets
    check` recognises, and end with the check's verdict (exit 3 when unusable).

    Without network, or for a source that is gone, one line names the source and the manual way.

    \b
    Examples:
      sbir-bench datasets fetch tuberlin --data-root /data/sbir
      sbir-bench datasets fetch domainnet --data-root /data/sbir --mirror http://mirror.example.org/domainnet
    """
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..data.check import check_dataset
    from ..data.discovery import default_data_root
    from ..data.fetch import fetch, sources
    from ..log import set_quiet

    set_quiet(quiet)
    sources(name)  # an unknown name is one line before anything is written
    root = Path(data_root).expanduser() if data_root else default_data_root()
    ledger = fetch(name, root, mirror)
    unpublished = [f for f, e in ledger.items() if not e.get("published")]
    if unpublished:
        click.echo(f"no checksum is published for {', '.join(sorted(unpublished))}: recorded what was downloaded in "
                   f"{root / 'downloads' / 'fetched.json'} (a later fetch is compared with it)")
    report = check_dataset(name, str(root), depth="sample")
    for line in report.lines():
        click.echo(line)
    click.echo(report.summary())
    if not report.usable:
        fail(report.summary(), DataError.exit_code)


@main.group("cache")
def cache_group() -> None:
    """Inspect or empty the frozen-feature cache (docs: sbir_bench/feature_cache.py).

    \b
    Examples:
      sbir-bench cache list
      sbir-bench cache clear
    """


@cache_group.command("list")
def cache_list() -> None:
    """One line per namespace: backbone, weights, entries, damaged shards and size on disk.

    \b
    Examples:
      sbir-bench cache list
    """
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..feature_cache import features_root, namespaces

    found = namespaces()
    if not found:
        click.echo(f"no cached features in {features_root()}")
    for ns in found:
        key = ns["key"]
        what = (f"{key.get('backbone')}  {str(key.get('weights'))[:24]}  size {(key.get('preprocess') or {}).get('size')}  "
                f"{key.get('precision')}/{key.get('device_type')}") if isinstance(key, dict) else "(key missing or damaged)"
        damaged = f"  {ns['damaged']} damaged shard(s), dropped on next use" if ns["damaged"] else ""
        click.echo(f"{ns['namespace']}  {what}  {ns['entries']} images  {ns['bytes'] / 2**20:.1f} MiB{damaged}")


@cache_group.command("clear")
def cache_clear() -> None:
    """Delete every cached feature (they are recomputed when next needed).

    \b
    Examples:
      sbir-bench cache clear
    """
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..feature_cache import clear, features_root

    click.echo(f"removed {clear()} namespace(s) from {features_root()}")
