"""The official UCDR-line samplers (``train.sampler: balanced | dpk``, sbir_bench/data/balanced.py).

The streams are held to the indices ProS's ``BalancedSampler`` and DePro's DPK yield on the same image
lists (``fixtures/official/samplers.json``, recorded from their code by make_sampler_fixture.py); a run
is checked to feed exactly that stream to the method, stage after stage, resumable, and to say so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sbir_bench.cli import main
from sbir_bench.data.balanced import DomainImages, OfficialStream, StreamRule, stream_steps
from sbir_bench.errors import ConfigError, DataError
from sbir_bench.training.samplers import StreamSampler

HERE = Path(__file__).resolve().parent
FIXTURE = json.loads((HERE / "fixtures" / "official" / "samplers.json").read_text())
CASES = {c["name"]: c for c in FIXTURE["cases"]}


def stream_of(case) -> OfficialStream:
    return OfficialStream(StreamRule(case["rule"], case["per_domain"] or 12), case["domain_ids"], case["class_ids"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_epoch_is_the_official_sampler_s_stream(name):
    """Every epoch equals theirs, the position carried over (wrapped lists, DPK's sorted classes, its cut
    takes on a class of one image), and an earlier epoch asked for again (a resumed run) is the same."""
    case = CASES[name]
    stream = stream_of(case)
    got = [stream.epoch(e).tolist() for e in range(FIXTURE["epochs"])]
    assert got == case["streams"]
    assert stream.size == case["length"]
    assert stream.epoch(1).tolist() == case["streams"][1]  # recomputed from the start
    assert stream.epoch(3).tolist() == case["streams"][3]


def test_dpk_blocks_show_every_domain_the_same_three_classes_four_times():
    case = CASES["dpk-5"]
    stream = stream_of(case)
    first = stream.epoch(0)[:60].tolist()
    blocks = [first[i:i + 12] for i in range(0, 60, 12)]
    for d, block in enumerate(blocks):
        assert {case["domain_ids"][i] for i in block} == {d}
    classes = [[case["class_ids"][i] for i in block] for block in blocks]
    assert all(sorted(set(c)) == [0, 1, 2] for c in classes)  # the sorted class order, no shuffle


def test_a_run_refuses_a_dpk_list_that_cuts_blocks_short_and_a_block_too_large():
    with pytest.raises(DataError, match="single training image"):
        stream_of(CASES["dpk-2"]).check_whole_epochs()
    stream_of(CASES["balanced-2"]).check_whole_epochs()  # balanced blocks are never cut
    with pytest.raises(DataError, match="needs at least 50 images"):
        OfficialStream(StreamRule("balanced", 50), [0] * 60 + [1] * 40, [0] * 100)
    with pytest.raises(ConfigError, match="exceed the 70 images"):
        StreamSampler(stream_of(CASES["balanced-2"]), 20, 2)


def test_batches_are_cut_from_the_stream_per_rank_and_continue_after_earlier_stages():
    stream = stream_of(CASES["balanced-2"])
    order = [stream.epoch(e).tolist() for e in range(3)]
    one = StreamSampler(stream, 5, 7, epochs_before=1)  # 7 batches of 10 images from the stream's epoch 1
    one.set_epoch(1)  # this stage's second epoch: the stream's third
    assert [i for _, i in one] == order[2]
    assert {e for e, _ in one} == {2}  # the dataset seeds augmentation with the stream's epoch: fresh in stage 2
    ranks = [list(StreamSampler(stream, 5, 3, 0, rank, 2)) for rank in (0, 1)]
    batches = [ranks[0][5 * s: 5 * s + 5] + ranks[1][5 * s: 5 * s + 5] for s in range(3)]
    assert [i for b in batches for _, i in b] == order[0][:30]
    assert stream_steps("balanced", 5, 5, [37, 53]) == 7 == stream.size // 10


SHORT = ["--epochs", "2", "--batch-size", "6", "--set", "train.val_every=0", "--set", "eval.save_embeddings=false",
         "--quiet"]


@pytest.mark.slow  # a whole run and its dry run (5 s): the quick loop keeps the stream and resume checks
def test_a_run_feeds_the_method_the_stream_and_its_record_and_estimate_say_so(tmp_path, monkeypatch):
    """DePro under DPK on the mini set: each step's images are the next 12 of the stream (2 x batch 6), in
    order, epoch after epoch; the record states the sampler, its domains and epoch; the dry run counts the
    same steps."""
    from sbir_bench import runner
    from sbir_bench.methods import get_method
    built, seen = [], []

    class Captured(DomainImages):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    depro = get_method("depro")
    original = depro.objective
    monkeypatch.setattr(runner, "DomainImages", Captured)
    monkeypatch.setattr(depro, "objective", lambda self, images, labels, domains: (
        seen.append((labels.tolist(), domains.tolist())), original(self, images, labels, domains))[1])
    args = ["run", "depro", *SHORT, "--set", "train.sampler=dpk", "--output-dir", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = built[0]
    steps = data.stream.size // 12
    expected = []
    for epoch in range(2):
        order = data.stream.epoch(epoch).tolist()
        for s in range(steps):
            chunk = order[12 * s: 12 * s + 12]
            expected.append(([data.class_ids[i] for i in chunk], [data.domain_ids[i] for i in chunk]))
    assert seen == expected
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    train = record["train"]
    assert (train["sampler"], train["images_per_batch"], train["steps_per_epoch"]) == ("dpk", 12, steps)
    assert train["domain_images"] == data.stream.sizes and record["config"]["train"]["sampler"] == "dpk"
    monkeypatch.undo()  # the dry run traces the real loss on the meta device
    dry = CliRunner().invoke(main, [*args, "--dry-run"])
    assert dry.exit_code == 0 and f"{steps} steps/epoch" in dry.output, dry.output


def test_another_sampler_is_another_training_identity():
    from sbir_bench.config import build_run_config
    from sbir_bench.runner import training_identity
    identities = {training_identity(build_run_config({}, {"method": "depro", "train.sampler": sampler}))
                  for sampler in ("triplets", "balanced", "dpk")}
    assert len(identities) == 3


@pytest.mark.parametrize("extra,message", [
    (["--set", "train.steps_per_epoch=40"], "40 step(s) of 12 images exceed the 420 images of one train.sampler=balanced"),
    (["--batch-size", "300"], "each of the 2 training domains needs at least 300 images for one block; their sizes are [210, 420]"),
])
def test_a_stream_the_data_cannot_fill_is_refused_before_any_weight_loads(tmp_path, monkeypatch, extra, message):
    from sbir_bench import runner
    monkeypatch.setattr(runner, "build", lambda *a, **k: pytest.fail("the backbone was built"))
    result = CliRunner().invoke(main, ["run", "pros", *SHORT, "--set", "train.sampler=balanced",
                                       "--set", "method_config.units_batch_size=3", *extra, "--output-dir", str(tmp_path)])
    assert result.exit_code != 0 and message in result.output, result.output
    assert not list(tmp_path.glob("*.json"))


def test_a_method_that_trains_on_triplets_refuses_an_official_sampler_before_any_work(tmp_path):
    result = CliRunner().invoke(main, ["run", "coop", *SHORT, "--set", "train.sampler=balanced",
                                       "--output-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "train.sampler=balanced draws single images" in result.output and "coop trains on triplets" in result.output
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize("call,stage,epoch", [(4, "units", 1), pytest.param(7, "simulator", 1, marks=pytest.mark.slow)])
def test_interrupted_under_the_balanced_stream_then_resumed_is_bit_identical(tmp_path, monkeypatch, call, stage, epoch):
    """ProS (two stages reading one stream) stopped in stage 1 or 2, then --resume: the stream position is
    recovered (stage 2 continues after stage 1's epochs) and the model equals a straight run's."""
    from interrupts import interrupted_then_resumed

    from sbir_bench.methods import get_method
    args = ["run", "pros", "--epochs", "2", "--batch-size", "4", "--set", "train.steps_per_epoch=2",
            "--set", "train.val_every=0", "--set", "method_config.units_epochs=2",
            "--set", "method_config.units_batch_size=4", "--set", "eval.save_embeddings=false",
            "--set", "train.sampler=balanced", "--quiet"]
    done = interrupted_then_resumed(tmp_path, monkeypatch, get_method("pros"), args, call, stage, epoch, "simulator")
    done.assert_same_model()
    assert done.resumed_record["train"]["sampler"] == "balanced"
