"""``sbir-bench reproduce``: every cell of the paper's tables has a config for every method, a dry run
on a machine without data lists what each run lacks, and the mini table runs end to end with the
user's rows beside the literature's, keeping finished cells on a second call."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from sbir_bench.cli import main
from sbir_bench.reproduce import METHOD_ORDER, cells, plan

ROOT = Path(__file__).resolve().parents[1]
PAPER = pd.read_csv(ROOT / "results" / "paper" / "splip_eccv2024.csv", comment="#", dtype={"split": str})


def paper_cells(setting: str) -> set:
    rows = PAPER[PAPER["setting"] == setting]
    return {(d, s if isinstance(s, str) else "1") for d, s in zip(rows["dataset"], rows["split"])}  # fg: no split


@pytest.mark.parametrize("setting", ["zs", "gzs", "fg"])
def test_every_paper_cell_has_a_config_for_every_method(setting, tmp_path):
    planned = plan(cells(setting), [0], tmp_path, {})
    by_cell = {}
    for p in planned:
        by_cell.setdefault((p.cfg.data.dataset, str(p.cfg.data.split)), set()).add(p.cfg.method)
        assert p.cfg.data.setting == setting
        if p.cfg.method in ("coop", "maple"):  # the reference recipes of their papers
            assert (p.cfg.train.optimizer, p.cfg.train.schedule, p.cfg.train.warmup) == ("sgd", "cosine-epoch", "constant")
    assert set(by_cell) == paper_cells(setting)
    assert all(methods == set(METHOD_ORDER) for methods in by_cell.values())


def test_dry_run_without_data_lists_every_run_and_what_it_lacks(tmp_path):
    result = CliRunner().invoke(main, ["reproduce", "zs", "--dry-run", "--data-root", str(tmp_path / "none"),
                                       "--output-dir", str(tmp_path / "out")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 0
    assert len(lines) == len(paper_cells("zs")) * len(METHOD_ORDER)
    assert all("missing:" in line and "not found under" in line and "weights" in line for line in lines)
    assert not list((tmp_path / "out").glob("*.json"))


def test_nothing_runnable_is_an_error_not_an_empty_success(tmp_path):
    result = CliRunner().invoke(main, ["reproduce", "gzs", "--data-root", str(tmp_path / "none"),
                                       "--output-dir", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 3 and "nothing to run" in result.output


@pytest.mark.slow
def test_mini_table_runs_end_to_end_with_literature_rows_and_keeps_finished_cells(tmp_path, mini_root):
    args = ["reproduce", "zs", "--dataset", "mini", "--method", "zeroshot-clip", "--method", "linear-probe",
            "--output-dir", str(tmp_path), "--set", "train.epochs=1", "--quiet"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    table = (tmp_path / "table_zs.md").read_text()
    for row in ("zeroshot-clip", "linear-probe", "SpLIP (paper)", "SEM-PCYC (paper)"):
        assert f"| {row} |" in table
    assert "mini ZS mAP@all" in table and "TU-Berlin-Ext ZS mAP@all" in table
    assert (tmp_path / "table_zs.tex").is_file() and (tmp_path / "table_zs.csv").is_file()
    records = sorted(p.name for p in tmp_path.glob("*.json"))
    assert len(records) == 2
    dry = CliRunner().invoke(main, [*args[:-1], "--dry-run"])
    assert dry.output.count("-> done") == 2
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and sorted(p.name for p in tmp_path.glob("*.json")) == records
