"""``sbir-bench reproduce``: every cell of the paper's tables has a config for every method, a dry run
on a machine without data lists what each run lacks, and the mini table runs end to end with the
user's rows beside the literature's, keeping finished cells on a second call."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from interrupts import loss_interrupted_at

from sbir_bench.cli import main
from sbir_bench.reproduce import cells, plan, table_methods

ROOT = Path(__file__).resolve().parents[1]
PAPER = pd.read_csv(ROOT / "results" / "paper" / "splip_eccv2024.csv", comment="#", dtype={"split": str})

# Typed from SpLIP's tables as its project page prints them (not read from the CSV the code reads):
# the cells of each table, and the rows of SpLIP and CLIP-AT, the two methods compared most.
CELLS = {"zs": {("sketchy", "1"), ("sketchy", "2"), ("tuberlin", "1"), ("quickdraw", "1")},
         "gzs": {("sketchy", "2"), ("tuberlin", "1")}, "fg": {("sketchy-fg", "1")}}
METHODS = {"zeroshot-clip", "linear-probe", "coop", "cocoop", "maple", "clip-at", "pros", "depro", "ucdr-adapter",
           "splip"}
PRINTED = [  # (method, setting, dataset, split, metric, value)
    ("SpLIP", "zs", "sketchy", "1", "mAP@all", 0.802), ("SpLIP", "zs", "sketchy", "1", "P@100", 0.867),
    ("SpLIP", "zs", "sketchy", "2", "mAP@200", 0.764), ("SpLIP", "zs", "sketchy", "2", "P@200", 0.773),
    ("SpLIP", "zs", "tuberlin", "1", "mAP@all", 0.731), ("SpLIP", "zs", "tuberlin", "1", "P@100", 0.782),
    ("SpLIP", "zs", "quickdraw", "1", "mAP@all", 0.342), ("SpLIP", "zs", "quickdraw", "1", "P@200", 0.446),
    ("SpLIP", "gzs", "sketchy", "2", "mAP@200", 0.682), ("SpLIP", "gzs", "sketchy", "2", "P@200", 0.745),
    ("SpLIP", "gzs", "tuberlin", "1", "mAP@all", 0.667), ("SpLIP", "gzs", "tuberlin", "1", "P@100", 0.703),
    ("SpLIP", "fg", "sketchy-fg", "", "Acc@1", 0.3345), ("SpLIP", "fg", "sketchy-fg", "", "Acc@5", 0.6671),
    ("CLIP-AT", "zs", "sketchy", "2", "mAP@200", 0.723), ("CLIP-AT", "zs", "sketchy", "2", "P@200", 0.725),
    ("CLIP-AT", "zs", "tuberlin", "1", "mAP@all", 0.651), ("CLIP-AT", "zs", "tuberlin", "1", "P@100", 0.732),
    ("CLIP-AT", "zs", "quickdraw", "1", "mAP@all", 0.202), ("CLIP-AT", "zs", "quickdraw", "1", "P@200", 0.388),
    ("CLIP-AT", "gzs", "sketchy", "2", "mAP@200", 0.556), ("CLIP-AT", "gzs", "sketchy", "2", "P@200", 0.627),
    ("CLIP-AT", "gzs", "tuberlin", "1", "mAP@all", 0.609), ("CLIP-AT", "gzs", "tuberlin", "1", "P@100", 0.638),
    ("CLIP-AT", "fg", "sketchy-fg", "", "Acc@1", 0.2868), ("CLIP-AT", "fg", "sketchy-fg", "", "Acc@5", 0.6234),
]


def paper_cells(setting: str) -> set:
    return CELLS[setting]


def test_the_literature_csv_holds_the_printed_rows():
    table = {(r.method, r.setting, r.dataset, r.split if isinstance(r.split, str) else "", r.metric): r.value
             for r in PAPER.itertuples()}
    for *key, value in PRINTED:
        assert table.get(tuple(key)) == pytest.approx(value, abs=1e-9), key
    for setting, listed in CELLS.items():  # and every cell it has is one of the tables'
        rows = PAPER[PAPER["setting"] == setting]
        assert {(d, s if isinstance(s, str) else "1") for d, s in zip(rows["dataset"], rows["split"])} == listed


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
    assert all(methods == METHODS for methods in by_cell.values())
    assert set(table_methods()) == METHODS  # the tables' methods come from the registry


@pytest.mark.slow  # the quick loop stays under 3 minutes; CI runs it (the whole suite)
def test_dry_run_without_data_lists_every_run_and_what_it_lacks(tmp_path):
    cheap = ["zeroshot-clip", "linear-probe"]  # every method's estimate: the slow test of tests/test_sizing.py
    result = CliRunner().invoke(main, ["reproduce", "zs", "--dry-run", "--data-root", str(tmp_path / "none"),
                                       "--output-dir", str(tmp_path / "out"), *(f"--method={m}" for m in cheap)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 0, result.output
    assert len(lines) == len(paper_cells("zs")) * len(cheap)
    assert all("missing:" in line and "not found under" in line and "weights" in line for line in lines)
    assert all("GPU-h on a100-80gb" in line.split("|")[-1] for line in lines)  # and what each costs
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


@pytest.mark.slow  # the quick loop stays under 3 minutes; CI runs it (the whole suite)
def test_a_dry_run_never_touches_the_network_and_says_which_weights_are_not_cached(tmp_path, monkeypatch):
    import socket
    dialled = []

    def no_network(address, *args, **kwargs):
        dialled.append(address)
        raise OSError("network is unreachable")
    monkeypatch.setattr(socket, "create_connection", no_network)
    for flag in ("SBIR_BENCH_OFFLINE", "HF_HUB_OFFLINE"):  # as on a user's machine: downloads allowed
        monkeypatch.delenv(flag, raising=False)
    result = CliRunner().invoke(main, ["reproduce", "zs", "--dry-run", "--output-dir", str(tmp_path / "zs"),
                                       "--data-root", str(tmp_path / "nodata"), "--method", "coop"])  # estimates too
    assert result.exit_code == 0, result.output
    assert dialled == [] and "GPU-h" in result.output
    assert "weights ViT-B-32/openai not cached" in result.output and "downloaded on first use" in result.output


def test_one_unreachable_weight_host_is_probed_once_per_process(monkeypatch):
    import socket

    from sbir_bench.models import factory
    dialled = []
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: dialled.append(address) or
                        (_ for _ in ()).throw(OSError("unreachable")))
    for flag in ("SBIR_BENCH_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)
    factory._reachable.cache_clear()
    try:
        assert all(factory._offline({"url": "https://example.org/w.pt"}) for _ in range(5))
    finally:
        factory._reachable.cache_clear()
    assert dialled == [("example.org", 443)]


def test_a_finished_resumed_cell_in_reproduce_is_kept(tmp_path, mini_root):
    out = tmp_path / "table"
    args = ["reproduce", "zs", "--dataset", "mini", "--method", "zeroshot-clip", "--output-dir", str(out), "--quiet"]
    assert CliRunner().invoke(main, args).exit_code == 0
    records = sorted(out.glob("*.json"))
    dry = CliRunner().invoke(main, [*args, "--dry-run"])
    assert "-> done" in dry.output
    assert CliRunner().invoke(main, args).exit_code == 0
    assert sorted(out.glob("*.json")) == records


def test_an_interrupted_reproduce_resumes_its_cell_from_the_checkpoint(tmp_path, mini_root, monkeypatch):
    """Ctrl-C inside a cell (exit 130); the same reproduce command again resumes that cell from its
    last epoch and ends with the weights of a table that was never interrupted."""
    import torch

    from sbir_bench.methods import get_method
    args = ["reproduce", "zs", "--dataset", "mini", "--method", "coop", "--set", "train.epochs=2", "--set",
            "train.steps_per_epoch=2", "--set", "train.batch_size=8", "--set", "train.val_every=0", "--quiet"]
    assert CliRunner().invoke(main, [*args, "--output-dir", str(tmp_path / "a")]).exit_code == 0
    cls = get_method("coop")
    original = cls.loss
    monkeypatch.setattr(cls, "loss", loss_interrupted_at(cls, 3))  # epoch 2, step 1
    first = CliRunner().invoke(main, [*args, "--output-dir", str(tmp_path / "b")])
    assert first.exit_code == 130 and "rerun the same reproduce command" in first.output, first.output
    assert not list((tmp_path / "b").glob("*.json"))
    monkeypatch.setattr(cls, "loss", original)
    again = CliRunner().invoke(main, [*args, "--output-dir", str(tmp_path / "b")])
    assert again.exit_code == 0, again.output
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "b").glob("*.json")]
    assert record["train"]["resumed_from_epoch"] == 1
    last = lambda out: torch.load(next(out.glob("**/coop_mini_zs_split1_seed0/last.pt")),  # noqa: E731
                                  weights_only=True)["trainable"]
    straight, resumed = last(tmp_path / "a"), last(tmp_path / "b")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_a_cell_of_a_method_trained_in_stages_resumes_from_its_stage_checkpoint(tmp_path, mini_root, monkeypatch):
    """ProS interrupted in stage 2 before its first checkpoint: only stage 1's (``<checkpoints>/units``)
    exists, and the plan says resume, not run (which would train stage 1 again)."""
    from sbir_bench.methods import get_method
    args = ["reproduce", "zs", "--dataset", "mini", "--method", "pros", "--set", "train.epochs=1", "--set",
            "train.steps_per_epoch=2", "--set", "train.batch_size=4", "--set", "method_config.units_epochs=1",
            "--set", "method_config.units_batch_size=4", "--set", "train.val_every=0", "--quiet",
            "--output-dir", str(tmp_path)]
    cls = get_method("pros")
    monkeypatch.setattr(cls, "loss", loss_interrupted_at(cls, 3))  # stage 2, step 1
    assert CliRunner().invoke(main, args).exit_code == 130
    assert list(tmp_path.glob("**/pros_mini_zs_split1_seed0/units/last.pt"))
    assert not list(tmp_path.glob("**/pros_mini_zs_split1_seed0/simulator/last.pt"))
    dry = CliRunner().invoke(main, [*args, "--dry-run"])
    assert "-> resume" in dry.output, dry.output


def test_a_refused_resume_never_leaves_the_old_config_s_row_standing_for_the_new_request(tmp_path, mini_root):
    """The same cell asked again with another training setting: its checkpoint is refused (exit 4) and the
    table is not rewritten from the earlier config's record as if that answered the new request."""
    out = tmp_path / "table"
    base = ["reproduce", "zs", "--dataset", "mini", "--method", "linear-probe", "--set", "train.epochs=1",
            "--output-dir", str(out), "--quiet"]
    assert CliRunner().invoke(main, base).exit_code == 0
    table = (out / "table_zs.md").read_bytes()
    again = CliRunner().invoke(main, [*base, "--set", "train.weight_decay=0.5"])
    assert again.exit_code == 4, again.output
    assert "no table" in again.output and "another config" in again.output
    assert (out / "table_zs.md").read_bytes() == table  # the earlier request's table, untouched


@pytest.mark.slow  # the quick loop stays under 3 minutes; CI runs it (the whole suite)
def test_a_dry_run_marks_every_cell_a_budget_refuses_and_sizes_the_others(tmp_path, mini_root):
    result = CliRunner().invoke(main, ["reproduce", "zs", "--dataset", "mini", "--method", "zeroshot-clip",
                                       "--method", "coop", "--method", "splip", "--memory-budget", "1KiB", "--dry-run",
                                       "--output-dir", str(tmp_path / "t")])
    assert result.exit_code == 7, result.output
    lines = result.output.splitlines()
    assert sum("|  refused: one triplet needs about" in ln for ln in lines) == 2  # coop and splip, each marked
    assert any("zeroshot-clip" in ln and "GPU-h" in ln for ln in lines)
    assert "2 of 3 run(s) refused" in result.output


def test_a_plug_in_method_with_recipes_appears_in_reproduce(tmp_path, monkeypatch, mini_root):
    """A third-party method is one registered class plus its recipes: reproduce plans its cells (after the
    built-ins' rows) without a line of sbir-bench changed."""
    from sbir_bench.methods import METHODS, get_method
    recipes = tmp_path / "recipes"
    (recipes / "mini").mkdir(parents=True)
    (recipes / "mini" / "zero-plugin.yaml").write_text("data: {dataset: mini}\n")
    (recipes / "paper" / "zs" / "tuberlin").mkdir(parents=True)
    (recipes / "paper" / "zs" / "tuberlin" / "zero-plugin.yaml").write_text(
        "base: ../../../../../recipes_base.yaml\ndata: {dataset: tuberlin, split: '1', setting: zs}\n")
    (tmp_path / "recipes_base.yaml").write_text("backbone: {name: sbir-tiny}\n")
    plugin = type("ZeroPlugin", (get_method("zeroshot-clip"),), {"recipes": recipes, "description": "a plug-in", "table_order": 100})
    METHODS.names()
    monkeypatch.setitem(METHODS._items, "zero-plugin", plugin)
    assert table_methods()[-1] == "zero-plugin"
    assert [c.name for c in cells("zs", methods=["zero-plugin"])] == ["tuberlin"]
    dry = CliRunner().invoke(main, ["reproduce", "zs", "--dataset", "mini", "--method", "zero-plugin", "--dry-run",
                                    "--output-dir", str(tmp_path / "t")])
    assert dry.exit_code == 0 and "zs/mini            zero-plugin" in dry.output, dry.output


DOMAINNET_HELD_OUT = {"sketch", "quickdraw", "painting", "infograph", "clipart"}  # the official scripts' five pairs


@pytest.mark.parametrize("setting,galleries", [("ucdr", {"g0", "g1"}), ("udcdr", {"official"})])
def test_the_domainnet_tables_hold_every_held_out_domain_under_the_pros_metric(setting, galleries, tmp_path):
    planned = plan(cells(setting), [0], tmp_path, {})
    found = {(p.cfg.data.held_out_domain, p.cfg.data.ucdr_gallery if setting == "ucdr" else p.cfg.data.udcdr_gallery)
             for p in planned}
    assert found == {(d, g) for d in DOMAINNET_HELD_OUT for g in galleries}
    assert {p.cfg.eval.protocol for p in planned} == {"pros"} and {p.cfg.data.dataset for p in planned} == {"domainnet"}
    assert {p.cfg.method for p in planned} == METHODS


def test_a_g1_cell_evaluates_the_model_its_g0_cell_trained(tmp_path):
    from sbir_bench.runner import training_identity
    planned = plan(cells("ucdr", ["domainnet-sketch", "domainnet-sketch-g1"], ["coop"]), [0], tmp_path, {})
    udcdr = plan(cells("udcdr", ["domainnet-sketch"], ["coop"]), [0], tmp_path, {})
    assert len({training_identity(p.cfg) for p in planned + udcdr}) == 1
    other = plan(cells("ucdr", ["domainnet-painting"], ["coop"]), [0], tmp_path, {})
    assert training_identity(other[0].cfg) != training_identity(planned[0].cfg)


@pytest.mark.slow  # the quick loop stays under 3 minutes; CI runs it (the whole suite)
def test_select_on_both_trains_each_cell_both_ways_and_reports_the_difference(tmp_path, mini_root):
    out = tmp_path / "sel"
    args = ["reproduce", "zs", "--dataset", "mini", "--method", "coop", "--method", "zeroshot-clip", "--select-on",
            "both", "--output-dir", str(out), "--quiet", "--set", "train.epochs=3", "--set", "train.steps_per_epoch=2",
            "--set", "eval.save_embeddings=false"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    records = {(r["method"], r["variant"]): r for r in (json.loads(p.read_text()) for p in out.glob("*.json"))}
    assert set(records) == {("coop", ""), ("coop", "test-selected"), ("zeroshot-clip", "")}  # trained cells twice
    val, test = records["coop", ""], records["coop", "test-selected"]
    assert (val["model_selection"]["on"], test["model_selection"]["on"]) == ("validation", "test")
    assert val["model_selection"]["patience"] == test["model_selection"]["patience"] == 2  # added, the same
    report = (out / "selection_zs.md").read_text()
    difference = test["metrics"]["mAP@all"] - val["metrics"]["mAP@all"]
    assert f"| coop | mini zs split 1 | mAP@all | 1 | {val['metrics']['mAP@all']:.4f} | " \
           f"{test['metrics']['mAP@all']:.4f} | {difference:+.4f} |" in report
    assert "zeroshot-clip" not in report
    assert "coop [test-selected] (model selected on the test set)" in (out / "table_zs.md").read_text()
