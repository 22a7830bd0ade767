"""Numbers a reviewer can defend: preprocessing equal to open_clip's, calibrated paired tests, sketches
with transparency, one class-name rule, the torchmetrics difference, safe checkpoints, report escaping,
and CoOp / MaPLe at the edges of their reference rules."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image, ImageDraw

from sbir_bench.errors import ConfigError, WeightsError
from sbir_bench.models import load_backbone
from sbir_bench.models.preprocess import eval_transform, preprocess_config


# ------------------------------------------------------------------------------ preprocessing
def _odd_images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((171, 300), (400, 97), (64, 65))]


@pytest.mark.parametrize("name,tag", [("ViT-B-32", "openai"),
                                      pytest.param("ViT-B-32", "laion2b_s34b_b79k", marks=pytest.mark.slow),
                                      pytest.param("ViT-L-14", "laion2b_s32b_b82k", marks=pytest.mark.slow)])
def test_eval_transform_equals_open_clips_own_preprocess(name, tag, tmp_path, monkeypatch):
    """Random weights: open_clip's download and weight loading are stubbed on both sides, so each
    builds the tag's model config and preprocessing exactly as it would with the real weights."""
    dummy = tmp_path / "weights.pt"
    dummy.write_bytes(b"stub")
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, **kw: str(dummy))
    monkeypatch.setattr(open_clip.factory, "load_checkpoint", lambda *a, **kw: None)
    monkeypatch.setattr("sbir_bench.models.factory._resolve_weights", lambda *a, **kw: str(dummy))
    _, _, reference = open_clip.create_model_and_transforms(name, pretrained=tag)
    backbone = load_backbone(name, tag)
    ours = eval_transform(preprocess_config(backbone.preprocess_cfg))
    for image in _odd_images():
        assert torch.equal(ours(image), reference(image))
    expected = open_clip.get_pretrained_cfg(name, tag)
    assert tuple(backbone.preprocess_cfg["mean"]) == tuple(expected.get("mean") or open_clip.OPENAI_DATASET_MEAN)


def test_training_augmentation_keeps_interpolation_and_statistics(tiny_backbone):
    from sbir_bench.models.preprocess import train_transform
    cfg = preprocess_config(tiny_backbone.preprocess_cfg)
    tf = train_transform(cfg, 0.08)
    crop, normalise = tf.transforms[0], tf.transforms[-1]
    assert crop.interpolation.value == cfg.interpolation and tuple(normalise.mean) == tuple(cfg.mean)
    assert crop.scale == (0.08, 1.0)  # CoOp/MaPLe's random_resized_crop, restored by data.crop_scale_min


# ------------------------------------------------------------------------------ statistics
@pytest.mark.slow  # thousands of permutation tests
def test_paired_test_is_calibrated_per_query_and_pooling_seeds_is_not():
    from sbir_bench.reporting.stats import paired_permutation_test, query_means
    rng = np.random.default_rng(0)
    n_sims, n_queries, n_seeds = 400, 60, 3
    per_query, pooled = [], []
    for _ in range(n_sims):
        difficulty = rng.uniform(0, 1, n_queries)
        # equal methods: each has its own per-query idiosyncrasy, shared by its seeds (the null holds)
        a = [np.clip(difficulty + rng.normal(0, 0.1, n_queries)[None, :] + rng.normal(0, 0.02, (n_seeds, n_queries)), 0, 1)]
        b = [np.clip(difficulty + rng.normal(0, 0.1, n_queries)[None, :] + rng.normal(0, 0.02, (n_seeds, n_queries)), 0, 1)]
        qa = query_means((np.arange(n_queries), row) for row in a[0])
        qb = query_means((np.arange(n_queries), row) for row in b[0])
        per_query.append(paired_permutation_test(np.array(list(qa.values())), np.array(list(qb.values())), n_perm=499))
        pooled.append(paired_permutation_test(a[0].ravel(), b[0].ravel(), n_perm=499))
    share = np.mean(np.array(per_query) < 0.05)
    assert 0.03 <= share <= 0.07, share
    assert np.mean(np.array(pooled) < 0.05) > 0.10  # one query counted once per seed: far too many "findings"


def test_paired_test_finds_a_real_difference_and_bootstrap_is_bca():
    from sbir_bench.reporting.stats import bootstrap_ci, paired_permutation_test
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, 300)
    better = np.clip(base + rng.normal(0.03, 0.05, 300), 0, 1)
    assert paired_permutation_test(better, base, n_perm=2000) < 0.01
    lo, hi = bootstrap_ci(better, n_boot=999)
    assert lo < better.mean() < hi
    assert bootstrap_ci(np.full(10, 0.5)) == (0.5, 0.5)


# ------------------------------------------------------------------------------ images with alpha
def _strokes(size: int = 64):
    return [(8, 8, 56, 56), (8, 56, 56, 8), (32, 4, 32, 60)]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_sketch_equals_the_same_strokes_on_white(tmp_path, mode):
    from sbir_bench.data.images import load_rgb
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    draw = ImageDraw.Draw(white)
    for line in _strokes():
        draw.line(line, fill=(0, 0, 0), width=3)
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(clear)
    for line in _strokes():
        draw.line(line, fill=(0, 0, 0, 255), width=3)
    if mode == "LA":
        clear = clear.convert("LA")
    elif mode == "P":
        clear = clear.convert("P", palette=Image.ADAPTIVE, colors=2)
        clear.info["transparency"] = clear.getpixel((0, 0))
    path = tmp_path / f"sketch_{mode}.png"
    clear.save(path)
    loaded = np.asarray(load_rgb(str(path)), dtype=np.int32)
    assert loaded.mean() > 200  # white paper, not the black of a dropped alpha channel
    assert np.abs(loaded - np.asarray(white, dtype=np.int32)).max() == 0


# ------------------------------------------------------------------------------ class names
@pytest.mark.parametrize("name,text,key", [
    ("car_(sedan)", "car (sedan)", "car (sedan)"), ("computer-mouse", "computer-mouse", "computer mouse"),
    ("hot-air_balloon", "hot-air balloon", "hot air balloon"), ("jack-o-lantern", "jack-o-lantern", "jack o lantern"),
    ("t-shirt", "t-shirt", "t shirt"), ("wine bottle", "wine bottle", "wine bottle"), ("  Teddy_bear ", "Teddy bear",
                                                                                         "teddy bear")])
def test_class_text_rule_is_the_reference_codes(name, text, key):
    """CoOp's and MaPLe's official code: ``classname.replace("_", " ")``, hyphens kept; matching keys
    ignore case, ``_`` and ``-``."""
    from sbir_bench.data.classnames import class_key, class_text
    assert class_text(name) == text and class_key(name) == key
    assert class_text(name) == " ".join(name.replace("_", " ").split())  # the reference rule, written again


@pytest.mark.parametrize("dataset", ["sketchy", "tuberlin", "quickdraw"])
def test_every_shipped_class_reads_as_words_and_keys_are_unique(dataset):
    from conftest import official_classes
    from sbir_bench.data.classnames import class_key, class_text
    names = official_classes(dataset)
    texts = [class_text(n) for n in names]
    assert not any("_" in t or "  " in t for t in texts)
    assert len({class_key(n) for n in names}) == len(names)


def test_every_text_path_uses_the_one_class_text(tiny_backbone):
    from sbir_bench.baselines.coop import CoOp
    from sbir_bench.data.classnames import class_text
    names = ["car_(sedan)", "computer-mouse", "hot-air_balloon", "jack-o-lantern"]
    coop = CoOp(tiny_backbone, names, [0, 1, 2])
    assert coop.prompts.texts(names) == [f"a photo of a {class_text(n)}." for n in names]
    frozen = coop.frozen_class_text(names)
    expected = torch.nn.functional.normalize(tiny_backbone.model.encode_text(
        tiny_backbone.tokenizer([f"a photo of a {class_text(n)}." for n in names])).float(), dim=-1)
    assert torch.allclose(frozen, expected, atol=1e-6)


# ------------------------------------------------------------------------------ torchmetrics
def test_map_all_equals_torchmetrics_only_with_positive_scores():
    from torchmetrics.functional.retrieval import retrieval_average_precision

    from sbir_bench.retrieval import PRESETS, Protocol, evaluate
    rng = np.random.default_rng(3)
    scores = rng.uniform(0.05, 1.0, (20, 50)).astype(np.float32)  # distinct and positive: they agree
    ql, gl = rng.integers(0, 3, 20), rng.integers(0, 3, 50)
    ours = evaluate(scores=scores, query_labels=ql, gallery_labels=gl, protocol=Protocol()).per_query["AP@all"]
    tm = [float(retrieval_average_precision(torch.from_numpy(scores[i]), torch.from_numpy(gl == ql[i]))) for i in range(20)]
    np.testing.assert_allclose(ours, tm, atol=1e-6)
    scores[:, ::3] -= 1.0  # a third of the items, relevant ones included, now score <= 0
    ours = evaluate(scores=scores, query_labels=ql, gallery_labels=gl, protocol=Protocol()).per_query["AP@all"]
    tm = [float(retrieval_average_precision(torch.from_numpy(scores[i]), torch.from_numpy(gl == ql[i]))) for i in range(20)]
    assert np.abs(ours - np.array(tm)).max() > 0.05  # torchmetrics >= 1.8 drops relevant items scored <= 0
    preset = evaluate(scores=scores, query_labels=ql, gallery_labels=gl, protocol=PRESETS["torchmetrics"])
    np.testing.assert_allclose(preset.per_query["AP@all"], tm, atol=1e-6)  # ... which its preset reproduces


# ------------------------------------------------------------------------------ safe checkpoints
def test_checkpoints_load_with_weights_only(tmp_path):
    from sbir_bench.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
    np.random.seed(5)
    state = rng_state()
    save_checkpoint(tmp_path, {"epoch": 1, "rng": state, "trainable": {"w": torch.ones(2)}})
    loaded = load_checkpoint(tmp_path)  # would raise under weights_only=True if it held a numpy array
    np.random.rand(3)
    set_rng_state(loaded["rng"])
    np.random.seed(5)
    expected = np.random.rand(3)
    set_rng_state(loaded["rng"])
    assert np.allclose(np.random.rand(3), expected)


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path):
    import pickle
    from sbir_bench.training.checkpoint import load_checkpoint

    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))
    torch.save({"epoch": 1, "evil": Evil()}, tmp_path / "last.pt", pickle_module=pickle)
    with pytest.raises(WeightsError, match="unreadable"):
        load_checkpoint(tmp_path)


def test_checkpoint_of_another_method_is_refused(tmp_path):
    from sbir_bench.training.checkpoint import check_resumable
    with pytest.raises(WeightsError, match="for method 'maple', not 'coop'"):
        check_resumable({"method": "maple"}, "coop", {}, tmp_path)


# ------------------------------------------------------------------------------ reports
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


# ------------------------------------------------------------------------------ CoOp / MaPLe edges
def test_coop_follows_the_reference_context_rules(tiny_backbone):
    from sbir_bench.baselines.coop import CoOp, CoOpConfig
    default = CoOp(tiny_backbone, ["star", "moon"], [0], CoOpConfig())
    assert default.ctx.shape[0] == 4 and default.prompts.prefix == "a photo of a"
    phrase = CoOp(tiny_backbone, ["star", "moon"], [0], CoOpConfig(ctx_init="a clean origami photo of a"))
    assert phrase.ctx.shape[0] == 6  # the phrase's word count, as the reference CoOp
    random = CoOp(tiny_backbone, ["star", "moon"], [0], CoOpConfig(ctx_init=None))
    assert random.ctx.shape[0] == 16 and random.prompts.prefix == " ".join(["X"] * 16)
    assert CoOp(tiny_backbone, ["star"], [0], CoOpConfig(ctx_init=None, n_ctx=8)).ctx.shape[0] == 8
    with pytest.raises(ConfigError, match="has 4 words"):
        CoOp(tiny_backbone, ["star"], [0], CoOpConfig(n_ctx=8))


def test_maple_follows_the_reference_context_rules(tiny_backbone):
    from sbir_bench.baselines.maple import MaPLe, MaPLeConfig
    default = MaPLe(tiny_backbone, ["star", "moon"], [0], MaPLeConfig())
    ids = tiny_backbone.tokenizer(["a photo of a star."])
    assert torch.equal(default.ctx.detach(), default.prompted.token_embeddings(ids)[0, 1:3].float())
    assert default.prompts.texts(["star"]) == ["a photo of a star."]  # "of a" stays as fixed text
    long_ctx = MaPLe(tiny_backbone, ["star"], [0], MaPLeConfig(n_ctx=6))
    assert long_ctx.prompts.prefix == " ".join(["X"] * 6)  # n_ctx > 4: the phrase is ignored, as the reference
    with pytest.raises(ConfigError, match="fewer than n_ctx"):
        MaPLe(tiny_backbone, ["star"], [0], MaPLeConfig(n_ctx=3, ctx_init="a photo"))
    deep = default.coupling[1:]
    assert all(torch.equal(layer.weight, deep[0].weight) for layer in deep)  # clones of one layer
    assert not torch.equal(default.coupling[0].weight, deep[0].weight)


def test_the_way_out_of_a_foreign_checkpoint_fits_run_and_reproduce(tmp_path):
    """reproduce has no --resume (it always resumes): the advice must not send its user to a flag it lacks."""
    from sbir_bench.errors import WeightsError
    from sbir_bench.training.checkpoint import check_resumable
    for ckpt, fingerprint in (({"method": "coop"}, None), ({"method": "splip", "trained_on": {"lr": 1}}, {"lr": 2})):
        with pytest.raises(WeightsError) as err:
            check_resumable(ckpt, "splip", fingerprint, tmp_path)
        message = str(err.value)
        assert f"delete {tmp_path}" in message and "another --output-dir" in message
        assert not message.rstrip(")").endswith("without --resume or use another --output-dir")
