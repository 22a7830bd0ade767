"""Real-scale machinery on small inputs: the frozen-feature cache (identity, reuse, invalidation),
training on cached features, evaluation sharded over two gloo processes, automatic loader workers,
and the engine's block size."""

from __future__ import annotations

import json
import os
from unittest.mock import patch

import numpy as np
import pytest
from conftest import run_record
import torch
from click.testing import CliRunner

from sbir_bench.cli import main
from sbir_bench.precision import FP32, Precision




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


def test_shard_bounds_cover_every_item_once():
    from sbir_bench.embedding import shard_bounds
    for n in (0, 1, 5, 17):
        for world in (1, 2, 3, 4):
            spans = [shard_bounds(n, r, world) for r in range(world)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


# Sharded evaluation over two processes: tests/test_trainer.py (the DDP test's zeroshot-clip GZS entry).


def test_automatic_workers():
    from sbir_bench.data.images import resolve_workers
    assert resolve_workers(3, 10_000, 64) == 3
    assert resolve_workers(None, 100, 64) == 0  # two batches or fewer: no worker processes
    with_cores = lambda n: patch("sbir_bench.data.images.available_cores", return_value=n)  # noqa: E731
    with with_cores(2):
        assert resolve_workers(None, 10_000, 64) == 0   # no spare core: decode in the main process
    with with_cores(3):
        assert resolve_workers(None, 10_000, 64) == 0   # below four cores: still the main process
    with with_cores(4):
        assert resolve_workers(None, 10_000, 64) == 3   # one core stays with the model
    with with_cores(16):
        assert resolve_workers(None, 10_000, 64) == 8   # capped
    with with_cores(16), patch.dict(os.environ, {"LOCAL_WORLD_SIZE": "4"}):
        assert resolve_workers(None, 10_000, 64) == 3   # four ranks share the cores


def test_block_rows_follow_the_memory_budget():
    from sbir_bench.retrieval.scoring import BYTES_PER_SCORE, block_rows
    assert block_rows(1000, 1000 * BYTES_PER_SCORE * 7) == 7
    assert block_rows(10, "1GiB") == 512  # capped on CPU
    assert block_rows(10, "auto", "cpu") == 512


@pytest.mark.parametrize("decimals", [0, 1, 2, 6])
def test_cpu_and_device_ranking_paths_give_the_same_counts(decimals):
    """The CPU path (numpy sorts, counts derived where nothing ties) equals the torch path a GPU runs,
    on problems full of ties (scores rounded to few decimals) and without."""
    from sbir_bench.retrieval.measures import RelevantRanks, counts_numpy, counts_torch, tie_shift_numpy, tie_shift_torch
    rng = np.random.default_rng(decimals)
    for _ in range(30):
        b, n = int(rng.integers(1, 12)), int(rng.integers(2, 200))
        scores = np.round(rng.standard_normal((b, n)), decimals).astype(np.float32)
        rel = np.sort(rng.choice(n, int(rng.integers(1, n + 1)), replace=False))
        fast, device = counts_numpy(scores, rel), counts_torch(torch.from_numpy(scores), torch.from_numpy(rel))
        for a, d in zip(fast, device):
            assert np.array_equal(a, d.numpy())
        rr = RelevantRanks(torch.from_numpy(scores), *device, n_gallery=n)
        rows, cols = torch.nonzero(rr.n_ge - rr.n_gt > 1, as_tuple=True)
        if len(rows):
            assert torch.equal(tie_shift_numpy(rr, rows, cols), tie_shift_torch(rr, rows, cols))


@pytest.mark.parametrize("decimals", [1, 6])
def test_every_metric_is_the_same_through_the_torch_ranking_path(decimals, monkeypatch):
    """The whole engine, every preset: the numpy ranking CPUs use against the torch ranking GPUs use
    (run here on CPU tensors by routing the CPU counts through ``counts_torch``)."""
    from sbir_bench.retrieval import PRESETS, evaluate_many, measures
    rng = np.random.default_rng(decimals)
    q, g = np.round(rng.normal(size=(70, 6)), decimals), np.round(rng.normal(size=(90, 6)), decimals)
    ql, gl = rng.integers(0, 5, 70), rng.integers(0, 5, 90)
    protocols = list(PRESETS.values())
    numpy_path = evaluate_many(q, g, ql, gl, protocols=protocols, device="cpu")
    monkeypatch.setattr(measures, "counts_numpy", lambda s, r: tuple(
        t.numpy() for t in measures.counts_torch(torch.from_numpy(np.ascontiguousarray(s)), torch.from_numpy(r))))
    torch_path = evaluate_many(q, g, ql, gl, protocols=protocols, device="cpu")
    for a, b in zip(numpy_path, torch_path):
        assert a.metrics.keys() == b.metrics.keys()
        for key in a.metrics:
            assert a.metrics[key] == pytest.approx(b.metrics[key], abs=1e-12), (a.protocol["preset"], key)
