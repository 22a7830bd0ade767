"""Never a silent wrong number, round two: damaged caches heal, repeated seeds are counted once,
labels cannot escape into paths, and inputs that used to hang or crash are handled."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import run_record
from click.testing import CliRunner
from interrupts import loss_interrupted_at

from sbir_bench.cli import main
from sbir_bench.precision import FP32
from sbir_bench.errors import OutputError






def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _random_values(path: Path) -> None:  # same shape, finite, wrong: only the checksum can tell
    array = np.load(path)
    np.save(path, np.random.default_rng(0).normal(size=array.shape).astype(np.float32))


@pytest.mark.parametrize("damage", ["truncated-shard", "random-shard", "nan-shard", "truncated-keys", "truncated-key-json"])
def test_a_damaged_cache_entry_is_dropped_recomputed_and_listed(damage, tmp_path, mini_root, cache_dir, caplog):
    first = run_record(tmp_path / "a")
    shard = next(cache_dir.glob("*/shard-*.npy"))
    if damage == "truncated-shard":
        _truncate(shard)
    elif damage == "random-shard":
        _random_values(shard)
    elif damage == "nan-shard":
        array = np.load(shard)
        array[0, 0] = np.nan
        np.save(shard, array)
    elif damage == "truncated-keys":
        _truncate(shard.with_name(shard.name.replace(".npy", ".keys.npz")))
    else:
        _truncate(shard.parent / "key.json")
    listed = CliRunner().invoke(main, ["cache", "list"])
    assert listed.exit_code == 0, listed.output
    if damage != "truncated-key-json":
        assert "damaged shard" in listed.output
    again = run_record(tmp_path / "b")
    assert again["metrics"] == first["metrics"]
    assert "damaged" not in CliRunner().invoke(main, ["cache", "list"]).output


def test_cache_cleared_during_a_run_stays_visible(tmp_path, mini_root, cache_dir, tiny_backbone):
    from sbir_bench import feature_cache
    from sbir_bench.data.discovery import Sample
    cache = feature_cache.open_for(tiny_backbone, dict(tiny_backbone.preprocess_cfg), "cpu", FP32)
    assert feature_cache.clear() == 1  # `cache clear` while the run holds the namespace open
    photo = next((mini_root / "photo" / "star").glob("*.jpg"))
    cache.store([Sample(str(photo), 0)], np.ones((1, 4), np.float32))
    listed = feature_cache.namespaces()
    assert len(listed) == 1 and listed[0]["entries"] == 1 and listed[0]["key"] == cache.key


def test_non_finite_features_are_never_cached(tmp_path, mini_root, cache_dir, tiny_backbone):
    from sbir_bench import feature_cache
    from sbir_bench.data.discovery import Sample
    cache = feature_cache.open_for(tiny_backbone, dict(tiny_backbone.preprocess_cfg), "cpu", FP32)
    photo = next((mini_root / "photo" / "star").glob("*.jpg"))
    cache.store([Sample(str(photo), 0)], np.full((1, 4), np.nan, np.float32))
    assert not list(cache_dir.glob("*/shard-*"))


def test_a_repeated_record_of_one_seed_is_counted_once(tmp_path, mini_root):
    out = tmp_path / "runs"
    run_record(out)
    shutil.copy(next(out.glob("*.json")), out / "copy-of-the-same-run.json")
    result = CliRunner().invoke(main, ["compare", "--results-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "(1)" in result.output and "(2)" not in result.output
    assert "seed 0 has 2 records; counted once" in result.output


def test_two_copies_of_the_same_data_are_one_dataset_and_other_files_are_another(tmp_path, make_tree):
    classes = ["airplane", "cat", "dog", "t-shirt"]
    split = tmp_path / "split.txt"
    split.write_text("dog\nt-shirt\n")
    out = tmp_path / "runs"
    first = make_tree("quickdraw", classes, photos=3)
    twin = tmp_path / "twin"
    shutil.copytree(first, twin)
    common = ["--dataset", "quickdraw", "--split-file", str(split)]
    a = run_record(out, *common, "--data-root", str(first))
    b = run_record(out, *common, "--data-root", str(twin))
    assert a["data_fingerprint"] == b["data_fingerprint"]
    result = CliRunner().invoke(main, ["compare", "--results-dir", str(out)])
    assert "(1)" in result.output and "counted once" in result.output
    (twin / "QuickDraw" / "QuickDraw_images_final" / "cat" / "n00000001_1.jpg").unlink()
    c = run_record(out, *common, "--data-root", str(twin))
    assert c["data_fingerprint"]["photos"] == a["data_fingerprint"]["photos"] - 1
    rows = CliRunner().invoke(main, ["compare", "--results-dir", str(out)]).output
    assert "data 1" in rows and "data 2" in rows


def test_records_carry_the_sha256_of_their_weights_and_data(tmp_path, mini_root):
    from sbir_bench.data import mini
    from sbir_bench.models import tiny_pretrain
    record = run_record(tmp_path / "runs")
    assert record["weights_sha256"] == tiny_pretrain.SHIPPED_SHA256
    assert record["data_fingerprint"]["content_sha256"] == mini.SHIPPED_SHA256


def test_eval_scores_string_labels_as_it_scores_their_codes(tmp_path):
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(6, 4)), rng.normal(size=(9, 4))
    ql, gl = np.array([0, 1, 2, 0, 1, 2]), np.array([0, 1, 2] * 3)
    names = np.array(["cat", "dog", "t-shirt"])
    results = []
    for tag, (a, b) in (("codes", (ql, gl)), ("names", (names[ql], names[gl]))):
        np.savez(tmp_path / f"{tag}.npz", query=q, gallery=g, query_labels=a, gallery_labels=b)
        out = tmp_path / f"{tag}.json"
        result = CliRunner().invoke(main, ["eval", "--embeddings", str(tmp_path / f"{tag}.npz"), "--json", str(out),
                                           "--quiet"])
        assert result.exit_code == 0, result.output
        results.append(json.loads(out.read_text())["metrics"])
    assert results[0] == results[1]


def test_protocols_all_with_a_name_is_every_preset_once(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "e.npz", query=rng.normal(size=(5, 3)), gallery=rng.normal(size=(6, 3)),
             query_labels=[0, 1, 0, 1, 0], gallery_labels=[0, 1, 0, 1, 1, 0])
    out = tmp_path / "m.json"
    result = CliRunner().invoke(main, ["eval", "--embeddings", str(tmp_path / "e.npz"), "--protocols", "all,sake",
                                       "--json", str(out), "--quiet"])
    from sbir_bench.retrieval.protocol import PRESETS
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(out.read_text())["protocols"]) == sorted(PRESETS)


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


def test_a_decompression_bomb_is_an_unreadable_image(tmp_path):
    from PIL import Image

    from sbir_bench.data.images import load_rgb
    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)
    assert load_rgb(str(path)) is None


def test_plot_file_names_never_collide():
    from sbir_bench.reporting.plots import file_stems
    stems = file_stems(["coop [a b]", "coop [a-b]", "splip", "coop [a b]"])
    assert len(set(stems.values())) == 3 and stems["splip"] == "splip"


def test_a_checkpoint_folder_is_held_by_one_run_at_a_time(tmp_path):
    from sbir_bench.training.checkpoint import claim_folder
    with claim_folder(tmp_path / "ckpt"):
        with pytest.raises(OutputError, match="in use by another run"):
            with claim_folder(tmp_path / "ckpt"):
                pass
    with claim_folder(tmp_path / "ckpt"):  # released when the holder is done
        pass


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
