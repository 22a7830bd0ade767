"""The frozen-feature cache (feature_cache.py): identical results with and without it, namespaces by
preprocessing, weights and precision, damaged or non-finite entries never served, and the cache command."""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import run_record

from sbir_bench.cli import main
from sbir_bench.precision import FP32, Precision


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _random_values(path: Path) -> None:  # same shape, finite, wrong: only the checksum can tell
    array = np.load(path)
    np.save(path, np.random.default_rng(0).normal(size=array.shape).astype(np.float32))


@pytest.mark.parametrize("damage", ["nan-shard", "truncated-keys", *(pytest.param(d, marks=pytest.mark.slow) for d in (
    "truncated-shard", "random-shard", "truncated-key-json"))])  # the quick loop: a bad value and a bad index
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


def _embeddings(record: dict) -> dict:
    with np.load(record["embeddings"]) as z:
        return {k: z[k] for k in ("query", "gallery")}


def test_results_with_and_without_the_cache_are_identical(tmp_path, mini_root, cache_dir):
    plain = run_record(tmp_path / "a", "--no-cache")
    assert not cache_dir.exists()  # --no-cache reads and writes nothing
    first = run_record(tmp_path / "b")
    second = run_record(tmp_path / "c")
    assert len(list(cache_dir.glob("*/shard-*.npy"))) >= 1
    for other in (first, second):
        assert other["metrics"] == plain["metrics"]
        for key, value in _embeddings(other).items():
            np.testing.assert_array_equal(value, _embeddings(plain)[key])


def test_second_run_reads_the_cache_and_a_touched_image_is_recomputed(tmp_path, mini_root, cache_dir):
    from sbir_bench import feature_cache
    run_record(tmp_path / "a")
    shards = set(cache_dir.glob("*/shard-*.keys.npz"))
    run_record(tmp_path / "b", "--seed", "0")
    assert set(cache_dir.glob("*/shard-*.keys.npz")) == shards  # everything came from the cache
    photo = next((mini_root / "photo" / "star").glob("*.jpg"))
    stat = photo.stat()
    try:
        os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        run_record(tmp_path / "c")
        new = set(cache_dir.glob("*/shard-*.keys.npz")) - shards
        assert len(new) == 1
        with np.load(next(iter(new))) as z:
            assert z["paths"].tolist() == [str(photo)]  # only the touched image was embedded again
    finally:
        os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert feature_cache.namespaces(cache_dir)[0]["entries"] >= 1


def test_other_preprocessing_or_weights_get_another_namespace(tmp_path, mini_root, cache_dir, tiny_backbone):
    from sbir_bench.feature_cache import open_for
    base = dict(tiny_backbone.preprocess_cfg)
    a = open_for(tiny_backbone, base, "cpu", FP32)
    b = open_for(tiny_backbone, {**base, "interpolation": "bilinear"}, "cpu", FP32)
    c = open_for(tiny_backbone, base, "cuda", Precision("bf16"))
    assert len({a.folder, b.folder, c.folder}) == 3 and a.folder == open_for(tiny_backbone, base, "cpu", FP32).folder
    run_record(tmp_path / "a")
    weights = tmp_path / "w.pt"
    from sbir_bench.models import load_backbone
    torch.save(load_backbone("sbir-tiny", "random").model.state_dict(), weights)
    run_record(tmp_path / "b", "--pretrained", str(weights))  # other weights: another namespace
    keys = [json.loads(p.read_text()) for p in cache_dir.glob("*/key.json")]
    assert len(keys) == 4 and len({k["weights"] for k in keys}) == 2  # a (reused by the run), b, c; new weights


def test_random_weights_are_never_cached(tmp_path, mini_root, cache_dir):
    run_record(tmp_path / "a", "--pretrained", "random")
    assert not list(cache_dir.glob("*/shard-*"))


@pytest.mark.slow  # three training runs
def test_linear_probe_trains_on_cached_features(tmp_path, mini_root, cache_dir):
    fast = ["--epochs", "2", "--set", "train.val_every=0"]
    record = run_record(tmp_path / "a", *fast, method="linear-probe")
    assert record["train"]["history"][-1]["loss"] > 0
    import open_clip

    def no_backbone(*args, **kwargs):
        raise AssertionError("the image encoder ran although every feature was cached")
    with patch.object(open_clip.model.CLIP, "encode_image", no_backbone):  # the cache is warm: training,
        again = run_record(tmp_path / "b", *fast, method="linear-probe")         # validation and test read it
    assert again["metrics"] == record["metrics"]  # deterministic on features
    augmented = run_record(tmp_path / "c", *fast, "--set", "method_config.augment=true", method="linear-probe")
    assert augmented["metrics"] != record["metrics"]  # the augmented path goes through the backbone


def test_cache_command_lists_and_clears(tmp_path, mini_root, cache_dir):
    run_record(tmp_path / "a")
    listed = CliRunner().invoke(main, ["cache", "list"])
    assert listed.exit_code == 0 and "sbir-tiny" in listed.output and "images" in listed.output
    cleared = CliRunner().invoke(main, ["cache", "clear"])
    assert cleared.exit_code == 0 and "removed 1 namespace" in cleared.output
    assert not list(cache_dir.glob("*/key.json"))
