"""The resource estimate (sizing.py): held to what a real step on the CPU saves and holds, for every
method at three sizes; its FLOP count to a hand count; the memory budget's micro-batches to the
unsplit step; and the estimate, budget and out-of-memory lines end to end from the command line."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner

from conftest import newest_record
from sbir_bench.cli import main
from sbir_bench.config import RunConfig, TrainConfig
from sbir_bench.data.triplets import TripletBatch
from sbir_bench.errors import OutOfMemoryError
from sbir_bench.methods import get_method
from sbir_bench.models import load_backbone
from sbir_bench.sizing import Counts, method_cost, optimizer_states, static_bytes, trace_step
from sbir_bench.training.trainer import Trainer

TRAINED = ["linear-probe", "coop", "cocoop", "maple", "clip-at", "splip", "pros"]
# (method, training stage): a method trained in stages is held to the estimate in each (ProS)
STAGED = [(m, s) for m in TRAINED for s in (("units", "simulator") if m == "pros" else ("",))]
NAMES = ["cat", "dog", "house", "tree", "car", "boat", "apple", "chair"]
# (backbone, triplets per step, seen classes): the sizes the estimate is held to; the third backbone is
# another shape (wider, shallower, three heads), registered below. (ViT-B-32 at random init passes the
# same test: add ("ViT-B-32", 2, 5) to run it; a minute more, so CI does not.)
SIZES = [("sbir-tiny", 2, 4), ("sbir-tiny", 3, 6), ("sbir-tiny-wide", 2, 5)]
WIDE = {"embed_dim": 48, "vision_cfg": {"image_size": 64, "layers": 3, "width": 96, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 96, "heads": 3, "layers": 3}}


@pytest.fixture(scope="module", autouse=True)
def wide_tiny_config(tmp_path_factory):
    """Register sbir-tiny-wide with open_clip for this module's tests."""
    import open_clip
    path = tmp_path_factory.mktemp("configs") / "sbir-tiny-wide.json"
    path.write_text(json.dumps(WIDE))
    open_clip.add_model_config(path)


def real_batch(method, n: int, features: bool, seed: int = 0) -> TripletBatch:
    g = torch.Generator().manual_seed(seed)
    side = method.backbone.image_size
    shape = (n, method.backbone.embed_dim) if features else (n, 3, side, side)
    x = lambda: torch.randn(shape, generator=g)  # noqa: E731
    labels = lambda: torch.randint(len(method.seen), (n,), generator=g)  # noqa: E731
    return TripletBatch(x(), x(), x(), labels(), labels(), features=features)


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("backbone,triplets,classes", SIZES)
@pytest.mark.parametrize("method,stage", STAGED)
def test_the_estimate_is_what_a_real_step_saves_and_holds(method, stage, backbone, triplets, classes):
    """Meta-device prediction vs one real CPU step (fp32) of the same method (in each of its training
    stages): saved-tensor bytes, parameters, gradients and AdamW state within 10 %."""
    cfg = RunConfig(method=method, train=TrainConfig(optimizer="adamw"))
    cfg.backbone.name = backbone
    counts = Counts(100, NAMES[:classes], list(range(classes)), 10, "test")
    cost = method_cost(cfg, counts, stage)
    torch.manual_seed(0)
    real = get_method(method)(load_backbone(backbone, "random" if backbone == "sbir-tiny" else None),
                              NAMES[:classes], list(range(classes)))
    real.begin_stage(stage)
    real.train()
    trainable = [p for p in real.parameters() if p.requires_grad]
    measured = trace_step(real, real_batch(real, triplets, cost.features))
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    optimizer.step()
    held = {"saved": measured.saved_bytes, "weights": nbytes([*real.parameters(), *real.buffers()]),
            "gradients": nbytes(p.grad for p in trainable if p.grad is not None),
            "optimiser": nbytes(t for s in optimizer.state.values() for t in s.values() if t.dim())}
    weights, grads, opt = static_bytes(cost, cfg.train)
    predicted = {"saved": cost.saved(triplets), "weights": weights, "gradients": grads, "optimiser": opt}
    for key, value in held.items():
        assert predicted[key] == pytest.approx(value, rel=0.10), (key, predicted, held)
    assert cost.flops(triplets) >= measured.flops > 0  # the CPU's fused attention kernel is not counted by torch


def test_the_flop_and_byte_counts_of_one_linear_layer_are_the_hand_counts():
    """y = x W^T (B x n -> B x m), loss = sum(y): forward 2Bnm, backward 2Bnm for W's gradient (x has
    none): 4Bnm FLOPs; autograd saves x alone (B n float32), W being a parameter."""
    b, n, m = 5, 7, 3

    class Layer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(n, m, bias=False)

        def loss(self, batch):
            return {"loss": self.linear(batch.sketch).sum()}
    x = torch.randn(b, n)
    trace = trace_step(Layer(), TripletBatch(x, x, x, torch.zeros(b), torch.zeros(b)))
    assert trace.flops == 4 * b * n * m
    assert trace.saved_bytes == b * n * 4


def test_optimiser_state_is_two_moments_for_adamw_and_the_momentum_for_sgd():
    assert optimizer_states(TrainConfig(optimizer="adamw")) == 2
    assert optimizer_states(TrainConfig(optimizer="sgd", momentum=0.9)) == 1
    assert optimizer_states(TrainConfig(optimizer="sgd", momentum=0.0)) == 0


def _step(method, micro_batches, seed: int = 1) -> dict:
    """The trainable tensors after one SGD step over ``micro_batches`` (one batch, as the trainer splits it)."""
    cfg = TrainConfig(optimizer="sgd", lr=0.5, momentum=0.0, weight_decay=0.0, batch_size=8,
                      grad_accum=len(micro_batches), amp=False)
    trainer = Trainer(method, list(range(8)), cfg, torch.device("cpu"), seed=0)
    torch.manual_seed(seed)  # the same random draws (jigsaw permutations, patch shuffles) either way
    trainer._step(micro_batches, "test")
    return {k: v.detach().clone() for k, v in method.trainable_state().items()}


def _halves(batch: TripletBatch, parts: int):
    size = len(batch.label) // parts
    cut = lambda t, i: t[i * size:(i + 1) * size]  # noqa: E731
    return [TripletBatch(*(cut(t, i) for t in (batch.sketch, batch.positive, batch.negative, batch.label,
                                               batch.negative_label)), features=batch.features) for i in range(parts)]


@pytest.mark.parametrize("method,stage", STAGED)
def test_a_split_step_is_the_whole_batch_step_exactly_where_the_method_says_so(method, stage, tiny_backbone):
    """Parameters after one step over the batch of 8, whole or as micro-batches of 4, 2 and 1: equal to 1e-5
    where the method declares the split invariant (``Method.split_invariant``), different where it does not
    (the linear probe's BatchNorm, ProS's stage-1 dropout, SpLIP's jigsaw share of an odd micro-batch)."""
    torch.manual_seed(0)
    cls = get_method(method)
    model = cls(tiny_backbone, NAMES, list(range(8)))
    model.begin_stage(stage)
    model.train()
    batch = real_batch(model, 8, model.trains_on_frozen_features())
    whole = _step(copy.deepcopy(model), [batch])
    verdicts = {}
    for parts in (2, 4) if method == "linear-probe" else (2, 4, 8):  # a BatchNorm needs two rows
        split = _step(copy.deepcopy(model), _halves(batch, parts))
        verdicts[8 // parts] = all(torch.allclose(split[k], whole[k], rtol=1e-5, atol=1e-5) for k in whole)
    declared = {micro: cls.split_invariant(model.config, stage, micro) for micro in verdicts}
    assert verdicts == declared
    expected_false = {"linear-probe": [4, 2], "splip": [1], "pros": [4, 2, 1] if stage == "units" else []}
    assert [m for m, same in declared.items() if not same] == expected_false.get(method, [])


def test_a_memory_budget_splits_the_batch_and_the_record_says_so(tmp_path, mini_root):
    from sbir_bench.config import build_run_config
    from sbir_bench.runner import run_counts
    from sbir_bench.sizing import predicted_peak
    cfg = build_run_config({}, {"method": "coop", "train.batch_size": 8})
    budget = predicted_peak(cfg, run_counts(cfg), 2)  # room for micro-batches of 2 triplets, not of 4
    out = tmp_path / "runs"
    result = CliRunner().invoke(main, ["run", "coop", "--epochs", "1", "--batch-size", "8", "--set",
                                       "train.steps_per_epoch=2", "--set", "train.val_every=0", "--memory-budget",
                                       str(budget), "--output-dir", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    train = newest_record(out)["train"]
    assert train["micro_batch"] == 2
    assert train["memory"]["micro_batches"] == 4 and train["memory"]["budget_bytes"] == budget
    assert train["memory"]["predicted_peak_bytes"] <= budget


def test_a_budget_never_splits_a_step_that_splitting_changes_and_names_the_knob(tmp_path, mini_root):
    """The linear probe's BatchNorm reads the whole batch: a budget that needs micro-batches is refused in
    one line naming train.grad_accum (part of the identity); asked for, that split runs and says so."""
    from sbir_bench.config import build_run_config
    from sbir_bench.runner import run_counts, training_identity
    from sbir_bench.sizing import predicted_peak
    cfg = build_run_config({}, {"method": "linear-probe", "train.batch_size": 8})
    budget = predicted_peak(cfg, run_counts(cfg), 2)
    out = tmp_path / "runs"
    args = ["run", "linear-probe", "--epochs", "1", "--batch-size", "8", "--set", "train.steps_per_epoch=2",
            "--set", "train.val_every=0", "--memory-budget", str(budget), "--output-dir", str(out), "--quiet"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == OutOfMemoryError.exit_code, refused.output
    assert "set train.grad_accum=4" in refused.output and "Traceback" not in refused.output
    assert not out.exists() or not list(out.glob("*.json"))
    asked = CliRunner().invoke(main, args + ["--set", "train.grad_accum=4"])
    assert asked.exit_code == 0, asked.output
    assert newest_record(out)["train"]["micro_batch"] == 2
    split = build_run_config({}, {"method": "linear-probe", "train.batch_size": 8, "train.grad_accum": 4})
    assert training_identity(split) != training_identity(cfg)


def test_a_budget_splits_splip_only_into_micro_batches_that_keep_its_jigsaw_rows(mini_root):
    """8 triplets, a budget with room for 3: the plan takes 4 micro-batches of 2, never 8 of 1 or an odd size."""
    from sbir_bench.config import build_run_config
    from sbir_bench.methods.base import Stage
    from sbir_bench.runner import run_counts
    from sbir_bench.sizing import plan_micro_batches, predicted_peak
    cfg = build_run_config({}, {"method": "splip", "train.batch_size": 8})
    counts = run_counts(cfg)
    assert plan_micro_batches(cfg, counts, predicted_peak(cfg, counts, 3), 1, Stage("", cfg.train)) == (4, 2)
    with pytest.raises(OutOfMemoryError, match="set train.grad_accum=8"):
        plan_micro_batches(cfg, counts, predicted_peak(cfg, counts, 1), 1, Stage("", cfg.train))


def test_a_budget_no_micro_batch_fits_is_one_line_naming_the_need(tmp_path, mini_root):
    out = tmp_path / "runs"
    result = CliRunner().invoke(main, ["run", "coop", "--memory-budget", "1KiB", "--output-dir", str(out), "--quiet"])
    assert result.exit_code == OutOfMemoryError.exit_code, result.output
    assert "one triplet needs about" in result.output and "budget of 0.00 GiB" in result.output
    assert not list(out.glob("*.json"))


def test_dry_run_prints_and_writes_the_estimate_and_runs_nothing(tmp_path, mini_root):
    out, estimates = tmp_path / "runs", tmp_path / "estimate.json"
    result = CliRunner().invoke(main, ["run", "splip", "--dry-run", "--gpu", "rtx4090-24gb", "--json", str(estimates),
                                       "--seed", "0", "--seed", "1", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "TFLOP/step" in result.output and "GPU-h on rtx4090-24gb" in result.output
    rows = json.loads(estimates.read_text())
    assert [r["run"] for r in rows] == ["splip seed 0", "splip seed 1"]
    for key in ("activation_bytes", "peak_memory_bytes", "flops_per_step", "steps_per_epoch", "micro_batch",
                "gpu_hours"):
        assert rows[0][key] > 0, key
    assert rows[0]["counts_from"] == "the copy on disk" and not out.exists()


def test_reproduce_dry_run_estimates_every_cell_without_the_data(tmp_path):
    result = CliRunner().invoke(main, ["reproduce", "fg", "--method", "coop", "--data-root", str(tmp_path / "none"),
                                       "--dry-run", "--output-dir", str(tmp_path / "table")])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if "GPU-h on a100-80gb" in ln]
    assert len(lines) == 1 and "fg/sketchy-fg" in lines[0] and "-> missing" in lines[0]  # the catalog's counts
    assert "TFLOP/step" in lines[0]


@pytest.mark.slow  # every paper cell traced on the meta device (about three minutes cold)
def test_every_paper_cell_fits_a_24_gb_card_and_the_docs_show_the_estimates():
    from sbir_bench.reproduce import cells, plan
    from sbir_bench.runner import estimate_run
    from sbir_bench.gpus import usable_memory
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        for table in ("zs", "gzs", "fg"):
            for planned in plan(cells(table), [0], Path(tmp), {}, network=False):
                est = estimate_run(planned.cfg, "rtx4090-24gb")
                assert est.peak_memory_bytes <= usable_memory("rtx4090-24gb"), (table, planned.cell, est.line())
    import sys
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from cell_costs import table_markdown
    docs = (Path(__file__).parents[1] / "docs" / "cluster.md").read_text()
    assert table_markdown() in docs


@pytest.mark.parametrize("method", ["splip", "cocoop"])
def test_the_estimate_with_checkpointed_class_texts_is_what_a_real_step_saves(method):
    """train.text_chunk=2: the prediction holds for the checkpointed step (what it saves outside the
    chunks) and is below the unchunked one's; the chunk itself is counted as workspace."""
    counts = Counts(100, NAMES[:6], list(range(6)), 10, "test")
    chunked = RunConfig(method=method, train=TrainConfig(text_chunk=2))
    cost, plain = method_cost(chunked, counts), method_cost(RunConfig(method=method), counts)
    torch.manual_seed(0)
    real = get_method(method)(load_backbone("sbir-tiny", "random"), NAMES[:6], list(range(6)))
    real.train()
    real.set_text_chunk(2)
    measured = trace_step(real, real_batch(real, 3, False))
    assert cost.saved(3) == pytest.approx(measured.saved_bytes, rel=0.10)
    assert cost.saved(3) < plain.saved(3) and cost.chunk_bytes > 0 and cost.saved.per_sample > 0
