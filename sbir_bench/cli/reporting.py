"""From records to tables and figures: ``compare``, ``export`` and ``plot`` (no model is run)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

from ..errors import DataError
from ..log import get_logger
from . import main
from .common import friendly_errors, selection_options

log = get_logger(__name__)


def table_options(fn: Callable) -> Callable:
    """Options shared by compare and export."""
    for option in reversed([
        click.option("--reference", help="'paper' (results/paper/*.csv) or a folder of reference CSVs: adds "
                                         "published rows and a delta column (against each method's own number, "
                                         "else against SpLIP's)."),
        click.option("--against", help="Add a p-value column: paired test of every method vs this one, per query."),
        click.option("--ci", is_flag=True, help="Add 95% bootstrap confidence intervals over queries."),
        click.option("--digits", default=3, show_default=True, type=click.IntRange(0, 12), help="Decimals shown."),
    ]):
        fn = option(fn)
    return fn


def _cells(patterns, results_dir, datasets, settings, methods, reference, against, ci):
    return _compared(patterns, results_dir, datasets, settings, methods, reference, against, ci)[1]


def _compared(patterns, results_dir, datasets, settings, methods, reference, against, ci):
    """(the runs' frame, the compare table's cells) of the records the options select."""
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..locations import published_folder
    from ..reporting.collect import runs_frame
    from ..reporting.compare import compare, load_reference
    ref = load_reference(published_folder() if reference == "paper" else Path(reference)) \
        if reference else None
    frame = runs_frame(patterns, results_dir, datasets, settings, methods)
    if frame.empty:
        raise DataError(f"no run records found in {' '.join(patterns) or results_dir}; run `sbir-bench run` first")
    return frame, compare(frame, ref, against, ci)


@main.command("compare")
@selection_options
@table_options
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
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..reporting.render import to_text

    click.echo(to_text(_cells(patterns, results_dir, datasets, settings, methods, reference, against, ci), digits))


@main.command("report")
@selection_options
@table_options
@click.option("--output-dir", "-o", default="results/report", show_default=True, type=click.Path(),
              help="The folder to write (index.html, data/, thumbs/); opens from disk or a shared drive.")
@click.option("--top-k", default=10, show_default=True, type=click.IntRange(1, 100), help="Photos shown per query.")
@click.option("--thumb-queries", default=300, show_default=True, type=click.IntRange(0, 100000),
              help="Queries per run that get thumbnails (with their top-k photos); the others show placeholders.")
@click.option("--thumb-px", default=96, show_default=True, type=click.IntRange(16, 512), help="Thumbnail size.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@friendly_errors
def report_command(patterns, results_dir, datasets, settings, methods, reference, against, ci, digits, output_dir,
                   top_k, thumb_queries, thumb_px, quiet) -> None:
    """Write a static report folder to open in a browser: the table (sortable), per-class AP, PR and
    training curves, every query with its top-k photos, and two runs side by side, query by query.

    \b
    Examples:
      sbir-bench report results/reproduce/zs -o results/report-zs
      sbir-bench report 'results/runs/*mini*.json' --reference paper --against splip
    """
    from ..log import set_quiet
    from ..reporting.report import ReportLimits, build_report

    set_quiet(quiet)
    frame, cells = _compared(patterns, results_dir, datasets, settings, methods, reference, against, ci)
    index = build_report(frame, cells, Path(output_dir), ReportLimits(top_k, thumb_queries, thumb_px), digits)
    click.echo(f"wrote {index} (open it in a browser; the folder is self-contained)")


@main.command("export")
@selection_options
@table_options
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
      sbir-bench export --format markdown --setting zs --reference paper
      sbir-bench export --format csv -o results.csv
    """
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..fileio import atomic_write_bytes, check_output_file
    from ..reporting.render import to_csv, to_latex, to_markdown

    if output:
        check_output_file(output, "--output")
    cells = _cells(patterns, results_dir, datasets, settings, methods, reference, against, ci)
    text = {"latex": lambda: to_latex(cells, digits, caption), "markdown": lambda: to_markdown(cells, digits),
            "csv": lambda: to_csv(cells)}[fmt]()
    if output:
        atomic_write_bytes(output, text.encode())
        click.echo(f"wrote {output}")
    else:
        click.echo(text, nl=False)


@main.command("plot")
@selection_options
@click.option("--kind", type=click.Choice(["pr", "per-class", "grid", "curves", "all"]), default="all", show_default=True,
              help="curves: training curves (loss terms, lr, validation metrics per epoch) from the records, "
                   "one line per method and variant with its seeds as a band.")
@click.option("--output-dir", default="results/plots", show_default=True, type=click.Path())
@click.option("--queries", default=4, show_default=True, type=click.IntRange(1, 32), help="Rows of the retrieval grid.")
@click.option("--top-k", default=8, show_default=True, type=click.IntRange(1, 32),
              help="Photos per row of the retrieval grid.")
@friendly_errors
def plot_command(patterns, results_dir, datasets, settings, methods, kind, output_dir, queries, top_k) -> None:
    """Draw PR curves (one per method and variant), per-class AP bars, retrieval grids, or training curves
    (PNG + PDF).

    \b
    Examples:
      sbir-bench plot
      sbir-bench plot --kind grid --method splip --queries 6 --top-k 10
      sbir-bench plot --kind curves --method splip
      sbir-bench plot 'results/runs/*gzs*.json' --kind pr --output-dir figures
    """
    # imported when the command runs: `sbir-bench --help` starts without open_clip and the models
    from ..fileio import check_output_dir
    from ..reporting.collect import runs_frame
    from ..reporting.plots import plot_runs

    check_output_dir(output_dir, "--output-dir")
    frame = runs_frame(patterns, results_dir, datasets, settings, methods)
    if frame.empty:
        raise DataError(f"no run records found in {' '.join(patterns) or results_dir}; run `sbir-bench run` first")
    if kind != "curves":  # curves come from the records alone; the other figures need the embeddings
        present = frame["embeddings"].map(lambda p: bool(p) and Path(p).is_file())
        for record, emb in zip(frame["record"][~present], frame["embeddings"][~present]):
            log.warning(f"skipped {record}: its embeddings {emb or '(not saved)'} are missing")
        frame = frame[present]
    if frame.empty:
        raise DataError("no run records with saved embeddings to plot")
    for path in plot_runs(frame, kind, Path(output_dir), queries, top_k):
        click.echo(f"wrote {path}")
