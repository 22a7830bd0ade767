"""The memory plan (training/memory.py): a budget splits a step only where the method's step stays the
whole batch's (each method's split_invariant held to a real step), names the knob where only a changing
split would fit, records what it did, and the out-of-memory line names the knobs as they stand."""

from __future__ import annotations

import copy

import pytest
import torch
from click.testing import CliRunner
from conftest import NAMES, STAGED, newest_record, real_batch

from sbir_bench.cli import main
from sbir_bench.config import TrainConfig
from sbir_bench.data.triplets import TripletBatch
from sbir_bench.errors import OutOfMemoryError
from sbir_bench.methods import get_method
from sbir_bench.training.trainer import Trainer


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
    (the linear probe's BatchNorm, ProS's stage-1 dropout, SpLIP's jigsaw share of an odd micro-batch, DePro's
    batch-hardest DaTri)."""
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
    expected_false = {"linear-probe": [4, 2], "splip": [1], "pros": [4, 2, 1] if stage == "units" else [],
                      "depro": [4, 2, 1],  # DaTri: each anchor's hardest pair within the batch
                      "ucdr-adapter": [4, 2, 1] if stage == "prompts" else []}  # its queues grow per pass
    assert [m for m, same in declared.items() if not same] == expected_false.get(method, [])


def test_a_memory_budget_splits_the_batch_and_the_record_says_so(tmp_path, mini_root):
    from sbir_bench.config import build_run_config
    from sbir_bench.runner import run_counts
    from sbir_bench.training.memory import predicted_peak
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
    from sbir_bench.training.memory import predicted_peak
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


@pytest.mark.slow  # the quick loop stays under 3 minutes; CI runs it (the whole suite)
def test_a_budget_splits_splip_only_into_micro_batches_that_keep_its_jigsaw_rows(mini_root):
    """8 triplets, a budget with room for 3: the plan takes 4 micro-batches of 2, never 8 of 1 or an odd size."""
    from sbir_bench.config import build_run_config
    from sbir_bench.methods.base import Stage
    from sbir_bench.runner import run_counts
    from sbir_bench.training.memory import plan_micro_batches, predicted_peak
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


@pytest.mark.parametrize("text_chunk,advice", [(0, "set train.text_chunk"), (4, "lower train.text_chunk (now 4)")])
def test_the_out_of_memory_line_names_text_chunk_as_it_stands(text_chunk, advice, tiny_backbone):
    """The GPU's out-of-memory error, met in a step: the line says to set train.text_chunk while it is off
    and to lower it once it is set, never to lower what is not set."""
    model = get_method("coop")(tiny_backbone, NAMES, list(range(8)))
    cfg = TrainConfig(batch_size=8, text_chunk=text_chunk)
    trainer = Trainer(model, list(range(8)), cfg, torch.device("cpu"), seed=0)
    with pytest.raises(OutOfMemoryError) as caught:
        with trainer._out_of_memory("epoch 1, step 1", 8):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
    assert advice in str(caught.value)


@pytest.mark.parametrize("text_chunk,advice", [(0, "set train.text_chunk"), (8, "lower train.text_chunk (now 8)")])
def test_a_budget_nothing_fits_names_text_chunk_as_it_stands(text_chunk, advice):
    from sbir_bench.training.memory import fewest_micro_batches
    with pytest.raises(OutOfMemoryError, match="one triplet needs about") as caught:
        fewest_micro_batches(8, peak=lambda size: 100 + size, budget=10, text_chunk=text_chunk)
    assert advice in str(caught.value)
