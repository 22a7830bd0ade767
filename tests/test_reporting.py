"""compare / export / plot: table numbers from hand-made records, LaTeX shape and golden file,
bootstrap coverage, the paired test, tolerance of corrupt files, determinism."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run_record

from sbir_bench.cli import main
from sbir_bench.fileio import atomic_write_json
from sbir_bench.records import SCHEMA
from sbir_bench.reporting.collect import runs_frame
from sbir_bench.reporting.compare import compare
from sbir_bench.reporting.render import to_latex
from sbir_bench.reporting.stats import bootstrap_ci, paired_permutation_test

GOLDEN = Path(__file__).parent / "golden" / "table.tex"


def make_record(folder: Path, method: str, seed: int, metrics: dict, dataset="sketchy", setting="zs", split="1",
                per_query: dict | None = None) -> Path:
    run_id = f"{method}_{dataset}_{setting}_{split}_{seed}"
    record = {"schema": SCHEMA, "method": method, "variant": "", "dataset": dataset, "setting": setting,
              "split": split, "backbone": "ViT-B-32", "seed": seed, "config": {}, "metrics": metrics}
    if per_query is not None:
        path = folder / run_id / "per_query.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, query_index=np.arange(len(next(iter(per_query.values())))),
                 **{k.replace("@", "_at_"): v for k, v in per_query.items()})
        record["per_query"] = str(path)
    return atomic_write_json(folder / f"{run_id}.json", record)


@pytest.fixture
def records(tmp_path) -> Path:
    folder = tmp_path / "runs"
    for seed, (a, b) in enumerate([(0.70, 0.60), (0.72, 0.64), (0.74, 0.62)]):
        make_record(folder, "splip", seed, {"mAP@all": a, "P@100": a + 0.1})
        make_record(folder, "coop", seed, {"mAP@all": b, "P@100": b + 0.1})
    make_record(folder, "coop", 0, {"mAP@all": 0.5}, setting="gzs")
    return folder


def test_table_numbers_from_hand_made_records(records):
    cells = compare(runs_frame([], records))
    cell = cells[(cells["row"] == "splip") & (cells["metric"] == "mAP@all") & (cells["setting"] == "zs")].iloc[0]
    assert cell["mean"] == pytest.approx(0.72) and cell["std"] == pytest.approx(0.02) and cell["n"] == 3
    cell = cells[(cells["row"] == "coop") & (cells["setting"] == "gzs")].iloc[0]
    assert cell["mean"] == 0.5 and cell["n"] == 1
    text = CliRunner().invoke(main, ["compare", "--results-dir", str(records)]).output
    assert "0.720 ± 0.020 (3)" in text and "0.620 ± 0.020 (3)" in text
    assert "Sketchy-Ext GZS mAP@all" in text


def test_filters_and_missing_cells(records):
    cells = compare(runs_frame([], records, settings=["gzs"]))
    assert set(cells["row"]) == {"coop"}
    latex = to_latex(compare(runs_frame([], records)))
    splip_line = next(line for line in latex.splitlines() if line.startswith("splip"))
    assert splip_line.split(" & ")[-1].startswith("-")  # splip has no GZS run


def test_latex_shape_golden_and_determinism(records):
    runner = CliRunner()
    first = runner.invoke(main, ["export", "--results-dir", str(records), "--format", "latex", "--caption", "ZS-SBIR"]).output
    second = runner.invoke(main, ["export", "--results-dir", str(records), "--format", "latex", "--caption", "ZS-SBIR"]).output
    assert first == second
    assert first.count("{") == first.count("}")
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\cmidrule(lr){2-3}", r"\cmidrule(lr){4-4}"):
        assert rule in first
    assert r"\textbf{0.720$\pm$0.020}" in first and r"\underline{0.620$\pm$0.020}" in first
    rows = [line for line in first.splitlines() if line.endswith(r"\\") and r"\multicolumn" not in line]
    assert len({line.count("&") for line in rows}) == 1  # every row has the same number of columns
    spans = sum(int(n) for n in re.findall(r"\\multicolumn\{(\d+)\}", first))
    assert spans == rows[0].count("&")  # the header spans exactly the metric columns
    assert first == GOLDEN.read_text()


def test_markdown_and_csv_exports(records, tmp_path):
    md = CliRunner().invoke(main, ["export", "--results-dir", str(records), "--format", "markdown"]).output
    assert "| **0.720 ± 0.020 (3)** |" in md.replace("| **0.720 ± 0.020 (3)** | ", "| **0.720 ± 0.020 (3)** |")
    out = tmp_path / "t.csv"
    CliRunner().invoke(main, ["export", "--results-dir", str(records), "--format", "csv", "-o", str(out)])
    lines = out.read_text().splitlines()
    assert lines[0].startswith("row,dataset,split,setting,metric,mean,std,n")
    assert any(line.startswith("splip,sketchy,1,zs,mAP@all,0.720000,0.020000,3") for line in lines)


def test_reference_rows_and_delta(records, tmp_path):
    ref = tmp_path / "paper"
    ref.mkdir()
    (ref / "x.csv").write_text("# from a paper\nmethod,dataset,split,setting,metric,value,source,table\n"
                               "splip,sketchy,1,zs,mAP@all,0.700,Someone 2024,Table 1\n")
    cells = compare(runs_frame([], records), reference=__import__("sbir_bench.reporting.compare", fromlist=["x"]).load_reference(ref))
    ours = cells[(cells["row"] == "splip") & (cells["metric"] == "mAP@all")].iloc[0]
    assert ours["delta"] == pytest.approx(0.02)
    paper = cells[cells["row"] == "splip (paper)"].iloc[0]
    assert paper["mean"] == 0.7 and bool(paper["reference"])
    text = CliRunner().invoke(main, ["compare", "--results-dir", str(records), "--reference", str(ref)]).output
    assert "+0.020" in text and "splip (paper)" in text


def test_bootstrap_ci_covers_true_mean_at_nominal_rate():
    rng = np.random.default_rng(0)
    trials, covered = 300, 0
    for t in range(trials):
        sample = rng.exponential(1.0, size=200)  # skewed, like per-query AP
        lo, hi = bootstrap_ci(sample, n_boot=400, seed=t)
        covered += lo <= 1.0 <= hi
    assert 0.90 <= covered / trials <= 0.985


def test_paired_test_separates_better_from_identical():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, 500)
    better = np.clip(base + rng.normal(0.05, 0.05, 500), 0, 1)
    assert paired_permutation_test(better, base, n_perm=2000) < 0.05
    assert paired_permutation_test(base, base.copy()) == 1.0
    same_dist = paired_permutation_test(base + rng.normal(0, 0.01, 500), base + rng.normal(0, 0.01, 500), n_perm=2000)
    assert same_dist > 0.05


def test_against_gives_p_values_from_per_query_values(tmp_path):
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 1, 300)
    folder = tmp_path / "runs"
    make_record(folder, "zeroshot-clip", 0, {"mAP@all": base.mean()}, per_query={"AP@all": base})
    good = np.clip(base + 0.1, 0, 1)
    make_record(folder, "splip", 0, {"mAP@all": good.mean()}, per_query={"AP@all": good})
    cells = compare(runs_frame([], folder), against="zeroshot-clip", ci=True)
    splip = cells[cells["row"] == "splip"].iloc[0]
    assert splip["p"] < 0.01 and splip["ci_lo"] < good.mean() < splip["ci_hi"]
    assert np.isnan(cells[cells["row"] == "zeroshot-clip"].iloc[0]["p"])


def test_corrupt_and_foreign_files_are_reported_and_skipped(records):
    (records / "half.json").write_text('{"schema": "sbir')
    (records / "other.json").write_text(json.dumps({"hello": "world"}))
    result = CliRunner().invoke(main, ["compare", "--results-dir", str(records)])
    assert result.exit_code == 0
    assert "skipped" in result.output and "half.json" in result.output and "0.720" in result.output


def test_no_records_is_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["compare", "--results-dir", str(tmp_path)])
    assert result.exit_code == 3 and "no run records" in result.output


@pytest.mark.slow  # the quick loop stays under 3 minutes; CI runs it (the whole suite)
def test_plot_command_writes_png_and_pdf(tmp_path, mini_root):
    runs = tmp_path / "runs"
    assert CliRunner().invoke(main, ["run", "zeroshot-clip", "--output-dir", str(runs), "--quiet"]).exit_code == 0
    out = tmp_path / "plots"
    result = CliRunner().invoke(main, ["plot", "--results-dir", str(runs), "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    for stem in ("pr_mini_split1_zs", "per_class_zeroshot-clip_mini_split1_zs_seed0", "grid_zeroshot-clip_mini_split1_zs_seed0"):
        assert f"{stem}.png" in names and f"{stem}.pdf" in names
    assert (out / "grid_zeroshot-clip_mini_split1_zs_seed0.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_ci_from_the_command_line_brackets_the_mean(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "runs"
    values = rng.uniform(0, 1, 400)
    make_record(folder, "splip", 0, {"mAP@all": values.mean()}, per_query={"AP@all": values})
    result = CliRunner().invoke(main, ["compare", "--results-dir", str(folder), "--ci"])
    assert result.exit_code == 0, result.output
    lo, hi = map(float, re.search(r"\[(0\.\d+), (0\.\d+)\]", result.output).groups())
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))  # the normal approximation, independent of the bootstrap
    assert lo < values.mean() < hi and abs((hi - lo) / 2 - half) < 0.2 * half
    plain = CliRunner().invoke(main, ["compare", "--results-dir", str(folder)]).output
    assert "[" not in plain.split("mAP@all", 1)[1]  # no interval without --ci


def test_delta_uses_the_published_columns_preset_or_marks_the_protocol_unknown(tmp_path):
    folder = tmp_path / "runs"
    path = make_record(folder, "splip", 0, {"mAP@all": 0.70})
    record = json.loads(path.read_text())
    record["metrics_by_protocol"] = {"sake": {"mAP@all": 0.75}}
    path.write_text(json.dumps(record))
    ref = tmp_path / "paper"
    ref.mkdir()
    header = "method,dataset,split,setting,metric,value,source,table,protocol\n"
    (ref / "known.csv").write_text(header + "splip,sketchy,1,zs,mAP@all,0.700,A 2024,T1,sake\n")
    text = CliRunner().invoke(main, ["compare", "--results-dir", str(folder), "--reference", str(ref)]).output
    assert "+0.050" in text and "+0.050?" not in text  # 0.75 under sake - 0.70: like with like
    (ref / "known.csv").write_text(header + "splip,sketchy,1,zs,mAP@all,0.650,A 2024,T1,\n")
    text = CliRunner().invoke(main, ["compare", "--results-dir", str(folder), "--reference", str(ref)]).output
    assert "+0.050?" in text  # 0.70 (our default) - 0.65, protocol of the published number unknown


def test_latex_escapes_every_special_character():
    from sbir_bench.reporting.render import latex_escape
    assert latex_escape("a_b{c}~^") == r"a\_b\{c\}\textasciitilde{}\textasciicircum{}"
    assert latex_escape("50% & $x$ #1 \\") == r"50\% \& \$x\$ \#1 \textbackslash{}"


@pytest.mark.slow  # four training runs
def test_plot_keeps_one_curve_per_variant(tmp_path, mini_root):
    from click.testing import CliRunner

    from sbir_bench.cli import main
    runs = tmp_path / "runs"
    for variant in ("", "a_b+c"):
        args = ["run", "zeroshot-clip", "--output-dir", str(runs), "--quiet"] + (["--variant", variant] if variant else [])
        assert CliRunner().invoke(main, args).exit_code == 0
    result = CliRunner().invoke(main, ["plot", "--results-dir", str(runs), "--output-dir", str(tmp_path / "p"),
                                       "--kind", "grid"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "p").glob("grid_*.png"))) == 2  # the variant is not dropped
    latex = CliRunner().invoke(main, ["export", "--results-dir", str(runs), "--format", "latex"]).output
    assert r"zeroshot-clip [a\_b+c]" in latex


def test_a_repeated_record_of_one_seed_is_counted_once(tmp_path, mini_root):
    out = tmp_path / "runs"
    run_record(out)
    shutil.copy(next(out.glob("*.json")), out / "copy-of-the-same-run.json")
    result = CliRunner().invoke(main, ["compare", "--results-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "(1)" in result.output and "(2)" not in result.output
    assert "seed 0 has 2 records; counted once" in result.output


def test_a_fifo_among_the_records_does_not_hang_compare(tmp_path):
    from test_reporting import make_record
    folder = tmp_path / "runs"
    make_record(folder, "coop", 0, {"mAP@all": 0.5})
    os.mkfifo(folder / "x.json")
    done = {}
    worker = threading.Thread(target=lambda: done.update(r=CliRunner().invoke(main, ["compare", "--results-dir",
                                                                                      str(folder)])), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert "r" in done and done["r"].exit_code == 0, done


def test_plot_file_names_never_collide():
    from sbir_bench.reporting.plots import file_stems
    stems = file_stems(["coop [a b]", "coop [a-b]", "splip", "coop [a b]"])
    assert len(set(stems.values())) == 3 and stems["splip"] == "splip"


@pytest.mark.slow  # a fresh interpreter
def test_importing_the_plots_chooses_no_backend_and_no_pyplot():
    code = ("import sys, matplotlib; before = matplotlib.rcParams._get('backend'); "
            "import sbir_bench.reporting.plots; "
            "print(matplotlib.rcParams._get('backend') == before, 'matplotlib.pyplot' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["True", "False"], done.stdout + done.stderr


def test_a_model_chosen_on_its_test_set_says_so_in_its_record_and_every_table(tmp_path, mini_root):
    """train.select_on: test (what ProS's, DePro's and UCDR-Adapter's code do) is a declared choice: the record
    states it, early stopping read the test task's values, the seen-class validation is still reported as such,
    and compare and export mark the row even when no other row differs."""
    from conftest import as_options, newest_record, short_training
    out = tmp_path / "runs"
    args = ["run", "linear-probe", *as_options(short_training({"train.early_stop": 1, "train.val_every": 1})),
            "--output-dir", str(out)]
    assert CliRunner().invoke(main, args + ["--set", "train.select_on=test"]).exit_code == 0
    record = newest_record(out)
    assert record["model_selection"] == {"kept": "best validated epoch", "on": "test", "keys": ["test:mAP@all",
                                         "test:Acc@1"], "every": 1, "patience": 1}
    assert all("val_test:mAP@all" in h for h in record["train"]["history"])
    assert "mAP@all" in record["val_metrics"] and not any(k.startswith("test:") for k in record["val_metrics"])
    table = CliRunner().invoke(main, ["compare", "--results-dir", str(out)]).output
    assert "linear-probe (model selected on the test set)" in table, table
    latex = CliRunner().invoke(main, ["export", "--results-dir", str(out), "--format", "latex"]).output
    assert "model selected on the test set" in latex


def test_rows_trained_under_other_samplers_are_told_apart_by_name():
    """Two runs of one method and cell under another train.sampler are two rows, each naming its sampler
    (and its config), never one averaged row."""
    import pandas as pd

    from sbir_bench.reporting.collect import row_labels
    frame = pd.DataFrame({"method": ["pros", "pros", "coop"], "variant": ["", "", ""], "dataset": ["mini"] * 3,
                          "split": ["1"] * 3, "setting": ["zs"] * 3, "backbone": ["b"] * 3, "protocol": ["p"] * 3,
                          "gzs_protocol": [""] * 3, "gallery": ["unique"] * 3, "config_id": ["a", "b", "c"],
                          "data_id": ["d"] * 3, "selected_on": [""] * 3, "sampler": ["triplets", "balanced", "triplets"]})
    assert row_labels(frame) == ["pros (triplets sampler, config 1)", "pros (balanced sampler, config 2)", "coop"]
