"""ProS computes what its official code computes, and trains as one resumable two-stage run.

The numbers come from running fangkaipeng/ProS (ccb8841) on a tiny OpenAI-layout CLIP of width 768,
input 224 and patch 32 (its generator is hard-coded to those) with fixed weights and inputs
(``tests/fixtures/official/make_pros_fixture.py``, ``official_inputs``); here the same CLIP is built
through open_clip (``test-pros-tiny.json``) and our ProS must give the same text features, stage-1
and stage-2 sequences, features, losses, gradients, one Adam step per stage and test embeddings, to
1e-4 in fp32. Large tensors are compared through the fixture's row summaries.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import official_inputs as oi
from official_checks import check, pros_tiny_backbone
import pytest
import torch
from sbir_bench.baselines.pros import SIMULATOR, UNITS, ProS, ProSConfig

from sbir_bench.config import TrainConfig
from sbir_bench.errors import DataError
from sbir_bench.methods import TripletBatch
from sbir_bench.training.trainer import build_optimizer, lr_lambda

HERE = Path(__file__).parent
EXPECTED = json.loads((HERE / "fixtures" / "official" / "pros.json").read_text())
# official name -> ours (the CLIP tensors ProS trains are our own copies; the rest keep their names)
NAMES = {"text_prompt_learner.ctx": "ctx", "text_encoder.text_projection": "text_projection",
         "specific_domain_prompts": "domain_units", "specific_class_prompts": "class_units",
         "ge_dom_prompt_template": "domain_template", "ge_cls_prompt_template": "class_template",
         "feature_proj": "image_proj", "feature_template": "class_embedding"}
UNUSED = {"generator.class_embedding": (768,), "generator.proj": (768, 512)}  # the official generator's, never used


@pytest.fixture(scope="module", autouse=True)
def _configs():
    import open_clip
    open_clip.add_model_config(HERE / "fixtures" / "model_configs")


def ours(official: str) -> str:
    return NAMES.get(official, official)


def pros_tiny(dropout: float = 0.0) -> ProS:
    """Our ProS on test-pros-tiny, holding the fixture's CLIP and ProS values (same names, same values)."""
    backbone = pros_tiny_backbone()
    classes = EXPECTED["class_names"]
    method = ProS(backbone, classes, list(range(len(classes))), ProSConfig(dropout=dropout))
    params = dict(method.named_parameters())
    official = [n for n in EXPECTED["state_keys"] if n in oi.pros_own_names(EXPECTED["state_keys"])]
    shapes = {n: UNUSED.get(n) or tuple(params[ours(n)].shape) for n in official
              if n in UNUSED or ours(n) in params}
    own = oi.weights(shapes, seed=50)
    with torch.no_grad():
        for name, value in own.items():
            if name not in UNUSED:
                params[ours(name)].copy_(torch.from_numpy(value))
    return method


def inputs(method: ProS):
    images = torch.from_numpy(oi.images(oi.PROS_IMAGES, seed=60, size=224))
    domains = torch.tensor([EXPECTED["domains"].index(d) for d in EXPECTED["inputs"]["domains"]])
    classes = torch.tensor([EXPECTED["class_names"].index(c) for c in EXPECTED["inputs"]["classes"]])
    return images, domains, classes


def test_text_prompts_equal_the_official_code():
    method = pros_tiny()
    assert method.text_prompts.ids.tolist() == EXPECTED["token_ids"]
    assert method.text_prompts.prefix_index.tolist() == EXPECTED["prefix_index"]
    with torch.no_grad():
        check(method.class_text_features(), EXPECTED["text_features"])


def test_sequences_and_test_embedding_equal_the_official_code():
    method = pros_tiny()
    images, domains, classes = inputs(method)
    with torch.no_grad():
        check(method.clip_sequence(images, method.domain_units[domains], method.class_units[classes]),
              EXPECTED["stage1_sequence"])
        generator_in = torch.cat([method.generator_input(images, domains, classes), method.generator.patches(images)], 1)
        check(generator_in, EXPECTED["stage2_generator_input"])
        generated = method.generated_prompts(images, domains, classes)
        check(generated, EXPECTED["stage2_generated"])
        check(method.clip_sequence(images, generated[:, 0], generated[:, 1]), EXPECTED["stage3_sequence"])
    check(method.embed_sketches(images), EXPECTED["test_embedding"])
    torch.testing.assert_close(method.embed_photos(images), method.embed_sketches(images))  # one embedding


def test_both_stages_train_what_the_official_code_trains():
    """Per stage: features, loss, the gradient of every trainable tensor, which get none, one Adam step."""
    method = pros_tiny()
    images, domains, classes = inputs(method)
    lr = EXPECTED["step_lr"]
    for number, stage in ((1, UNITS), (2, SIMULATOR)):
        expected = EXPECTED[f"stage{number}"]
        method.begin_stage(stage)
        optimizer = build_optimizer(method, TrainConfig(lr=lr, weight_decay=0.0))  # AdamW without decay = Adam
        official = EXPECTED[f"optimizer_stage{number}"]
        assert (official["weight_decay"], official["eps"], tuple(official["betas"])) == (0.0, 1e-8, (0.9, 0.999))
        assert all(g["eps"] == 1e-8 and g["betas"] == (0.9, 0.999) and not g["amsgrad"] for g in optimizer.param_groups)
        for group in optimizer.param_groups:  # the fixture's step raises eps on both sides (make_pros_fixture.py)
            group["eps"] = EXPECTED["step_eps"]
        optimizer.zero_grad()
        with torch.no_grad():
            check(method.features(images, domains, classes), expected["feature"])
            check(method.logits(images, domains, classes), [v for row in expected["logits"] for v in row])
        loss = method.class_loss(images, domains, classes)["loss"]
        assert float(loss.detach()) == pytest.approx(expected["loss"], abs=1e-5)
        loss.backward()
        params = dict(method.named_parameters())
        for name, grad in expected["grads"].items():
            check(params[ours(name)].grad, grad)
        assert set(expected["no_grad"]) <= set(UNUSED)  # only the tensors we do not build go without
        trainable = {n for n, p in params.items() if p.requires_grad}
        assert trainable == {ours(n) for n in expected["grads"]}
        optimizer.step()
        for name, value in expected["after_step"].items():
            if name not in UNUSED:
                check(params[ours(name)], value)
        with torch.no_grad():
            assert float(method.class_loss(images, domains, classes)["loss"]) == pytest.approx(
                expected["loss_after_step"], abs=1e-5)


def test_stage_one_dropout_is_the_official_draw():
    method = pros_tiny(dropout=0.5)
    images, domains, classes = inputs(method)
    method.eval()  # the official dropout ignores eval mode; so does ours
    torch.manual_seed(oi.PROS_DROPOUT_SEED)
    with torch.no_grad():
        loss = float(method.class_loss(images, domains, classes)["loss"])
    assert loss == pytest.approx(EXPECTED["stage1_dropout_loss"], abs=1e-5)
    assert loss != pytest.approx(EXPECTED["stage1"]["loss"], abs=1e-3)  # the draw mattered


def test_stage_two_rate_is_the_official_decay():
    f = lr_lambda(TrainConfig(lr=1e-4, schedule="exponential-epoch"), steps_per_epoch=3)
    ours_lr = [1e-4 * f(3 * epoch + 2) for epoch in range(len(EXPECTED["stage2_lr"]))]  # any step of the epoch
    np.testing.assert_allclose(ours_lr, EXPECTED["stage2_lr"], rtol=1e-12)


@pytest.mark.parametrize("dataset,classes", [("sketchy", 104), ("tuberlin", 220)])
def test_trainable_names_and_counts_at_vit_b32(dataset, classes):
    """Stage 1 as the official (351,744 on Sketchy, 440,832 on TU-Berlin); stage 2 as the official
    18,226,176 less the generator's class embedding and output projection, which it never uses."""
    from sbir_bench.sizing import meta_method
    method = meta_method("pros", {}, "ViT-B-32", [f"c{i}" for i in range(classes)], list(range(classes)))
    for number, stage in ((1, UNITS), (2, SIMULATOR)):
        expected = EXPECTED[f"trainable_{dataset}_stage{number}"]
        method.begin_stage(stage)
        names = {n for n, p in method.named_parameters() if p.requires_grad}
        assert names == {ours(n) for n in expected["names"] if n not in UNUSED}
        unused = sum(int(np.prod(shape)) for shape in UNUSED.values()) if number == 2 else 0
        assert method.n_trainable() == expected["count"] - unused


def test_a_break_turns_the_fixture_comparisons_red():
    """Each comparison can fail: the context at CoOp's position (after the start token) changes the
    text features, pooling the class token changes the embedding, an unmasked generator input
    changes the generated prompts, weight decay changes the step, training the units in stage 2
    changes the trainable set, a per-epoch cosine the rate."""
    method = pros_tiny()
    images, domains, classes = inputs(method)
    index = method.text_prompts.ctx_index.clone()
    method.text_prompts.ctx_index = torch.where(torch.arange(index.shape[1]) - 1 < method.config.n_ctx,
                                    torch.arange(index.shape[1]) - 1, torch.tensor(-1)).expand_as(index).clamp(min=-1)
    with torch.no_grad(), pytest.raises(AssertionError):
        check(method.class_text_features(), EXPECTED["text_features"])
    method.text_prompts.ctx_index = index
    method.config.pool_token = 0
    with pytest.raises(AssertionError):
        check(method.embed_sketches(images), EXPECTED["test_embedding"])
    method.config.pool_token = 1
    with torch.no_grad(), pytest.raises(AssertionError):
        check(method.generated_prompts(images), EXPECTED["stage2_generated"])  # unmasked: not the training input
    optimizer = build_optimizer(method, TrainConfig(lr=EXPECTED["step_lr"], weight_decay=0.1))
    for group in optimizer.param_groups:
        group["eps"] = EXPECTED["step_eps"]
    method.class_loss(images, domains, classes)["loss"].backward()
    optimizer.step()
    with pytest.raises(AssertionError):
        check(method.ctx, EXPECTED["stage1"]["after_step"]["text_prompt_learner.ctx"])
    method.begin_stage(SIMULATOR)
    method.class_units.requires_grad_(True)  # a stage 2 that would also train the units
    trained = {n for n, p in method.named_parameters() if p.requires_grad}
    assert trained != {ours(n) for n in EXPECTED["stage2"]["grads"]}
    f = lr_lambda(TrainConfig(lr=1e-4, schedule="cosine-epoch", epochs=40), steps_per_epoch=1)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose([1e-4 * f(e) for e in range(41)], EXPECTED["stage2_lr"], rtol=1e-6)


def test_checkpoints_hold_both_stages_tensors():
    method = pros_tiny()
    method.begin_stage(SIMULATOR)
    state = method.trainable_state()
    assert {"domain_units", "class_units", "generator_proj", "ctx"} <= set(state)  # units frozen, yet kept
    assert not any(k.startswith("clip.") for k in state)
    backbone_proj = method.backbone.model.visual.proj
    with torch.no_grad():
        method.image_proj.add_(1.0)
    assert not torch.equal(method.image_proj, backbone_proj)  # a copy: the caller's backbone is unchanged


def test_training_batch_is_half_sketches_half_photos():
    method = pros_tiny()
    seen = []
    method.class_loss = lambda images, domain, labels: seen.append((images.shape[0], domain.tolist(), labels.tolist()))
    x = torch.zeros(2, 3, 224, 224)
    method.loss(TripletBatch(x, x + 1, x + 2, torch.tensor([3, 4]), torch.tensor([0, 1])))
    assert seen == [(4, [1, 1, 0, 0], [3, 4, 3, 4])]


SHORT = ["--epochs", "2", "--batch-size", "4", "--set", "train.steps_per_epoch=2", "--set", "train.val_every=0",
         "--set", "method_config.units_epochs=2", "--set", "method_config.units_batch_size=4",
         "--set", "eval.save_embeddings=false", "--quiet"]


@pytest.mark.parametrize("call,stage,epoch", [(4, "units", 1), pytest.param(7, "simulator", 1, marks=pytest.mark.slow)])
def test_interrupted_in_either_stage_then_resumed_is_bit_identical(tmp_path, monkeypatch, call, stage, epoch):
    """Ctrl-C in the second epoch of stage 1 (call 4) or of stage 2 (call 7: 4 + 2 + 1), then --resume:
    the same stage-2 model, history and test metrics as a straight run (stage 1's dropout included)."""
    from interrupts import interrupted_then_resumed
    done = interrupted_then_resumed(tmp_path, monkeypatch, ProS, ["run", "pros", *SHORT], call, stage, epoch, SIMULATOR)
    done.assert_same_model()
    assert done.final["epoch"] == 2
    a, b = done.straight_record, done.resumed_record
    assert [h["loss"] for h in a["train"]["history"]] == [h["loss"] for h in b["train"]["history"]]
    assert [h["stage"] for h in b["train"]["history"]] == ["units"] * 2 + ["simulator"] * 2
    assert a["metrics"] == b["metrics"] and "pros" in b["metrics_by_protocol"]


@pytest.mark.parametrize("rule,dataset,inverted", [("official", "sketchy", True), ("official", "quickdraw", True),
                                                   ("official", "tuberlin", False), ("official", "mini", False),
                                                   ("all", "tuberlin", True), ("none", "sketchy", False)])
def test_sketches_are_inverted_where_the_official_loader_inverts_them(rule, dataset, inverted):
    """Its loader inverts domains named "sketch" or "quickdraw" (Sketchy's folder is sketch/, TU-Berlin's
    sketches/); photos never."""
    from PIL import Image

    from sbir_bench.models.preprocess import preprocess_config
    pp = preprocess_config(pros_tiny().backbone.preprocess_cfg)
    config = ProSConfig(invert_sketches=rule)
    train, evaluation = ProS.image_transforms(config, pp, 0.8)
    sketch_train, sketch_eval = ProS.sketch_transforms(config, dataset, train, evaluation)
    white, black = Image.new("RGB", (40, 30), (255, 255, 255)), Image.new("L", (40, 30), 0)
    expected = evaluation(black.convert("RGB")) if inverted else evaluation(white)
    torch.testing.assert_close(sketch_eval(white), expected)
    assert (sketch_train is train) == (not inverted)


def test_a_triplet_takes_the_sketch_transform_for_its_sketch_only(mini_root):
    from sbir_bench.data.discovery import index_dataset
    from sbir_bench.data.triplets import TripletDataset
    index = index_dataset("mini", mini_root)
    seen = sorted({s.label for s in index.sketches})
    data = TripletDataset(index.sketches, index.photos, seen, transform=lambda im: torch.tensor(0.0),
                          sketch_transform=lambda im: torch.tensor(1.0))
    sketch, positive, negative, *_ = data[0]
    assert (float(sketch), float(positive), float(negative)) == (1.0, 0.0, 0.0)


# ---------------------------------------------------------------- the recipe against the official protocol
PROTOCOL = json.loads((HERE / "fixtures" / "official" / "pros_protocol.json").read_text())
CELL_OF = {("Sketchy", 1): ("zs", "sketchy-split2"), ("Sketchy", 0): ("zs", "sketchy-split1"),
           ("TUBerlin", 0): ("zs", "tuberlin")}  # its ECCV split is our split 2, its random split our split 1


def _cell_config(setting: str, cell: str):
    from sbir_bench.reproduce import _config, cells
    return _config(next(c for c in cells(setting, methods=["pros"]) if c.name == cell), 0, HERE, {})


@pytest.mark.parametrize("case", PROTOCOL["epochs"], ids=lambda c: f"{c['sketches']}x{c['photos']}")
def test_an_epoch_is_as_long_as_its_balanced_sampler_makes_it(case):
    """The recipe's train.sampler: balanced gives stage 2 the steps of its BalancedSampler over the same two
    domains, as the run and its estimate count them; stage 1 (400 images) drops the stream's last partial
    batch, which its loader keeps (docs/methods.md); a domain smaller than one block is refused."""
    from sbir_bench.data.balanced import OfficialStream, StreamRule
    from sbir_bench.estimate import stage_steps
    from sbir_bench.sizing import Counts
    cfg = _cell_config("zs", "sketchy-split2").train
    assert cfg.sampler == "balanced"
    units, simulator = ProS.training_stages(ProSConfig(), cfg)
    counts = Counts(case["sketches"], [], [], 0, "test", case["photos"])
    steps = {s.name: stage_steps(s.train, counts, cfg.batch_size) for s in (units, simulator)}
    if not case["stage2_steps"]:  # its sampler makes no step: ours refuses before training
        with pytest.raises(DataError, match="needs at least 25 images"):
            OfficialStream(StreamRule.of("balanced", 25, 2), [0] * case["photos"] + [1] * case["sketches"], [])
        return
    assert steps[SIMULATOR] == case["stage2_steps"]
    assert case["stage1_steps"] - 1 <= steps[UNITS] <= case["stage1_steps"]


@pytest.mark.parametrize("case", [c for c in PROTOCOL["selection"] if (c["dataset"], c["eccv"]) in CELL_OF],
                         ids=lambda c: f"{c['dataset']}-eccv{c['eccv']}")
def test_the_recipe_chooses_the_epoch_by_the_official_metric_under_its_metric_code(case):
    from sbir_bench.training.trainer import selection_keys
    cfg = _cell_config(*CELL_OF[(case["dataset"], case["eccv"])])
    expected = case["map_metric"]
    assert selection_keys(cfg.train)[0] == f"pros:{expected}"
    assert cfg.train.select_protocol == "pros" and cfg.train.early_stop == 2


def test_the_recipe_trains_and_embeds_in_fp32_as_its_code_does():
    """Its training step's autocast is commented out and the model is cast to fp32: the recipe's train.amp and
    eval.amp are off, so a bf16 GPU embeds in fp32 too (the default eval.amp would take bf16 there)."""
    from sbir_bench.precision import evaluation_precision, training_precision
    assert PROTOCOL["training_step_autocast"] == [] and PROTOCOL["commented_autocast"]
    cfg = _cell_config("zs", "tuberlin")
    assert cfg.train.amp is False and cfg.eval.amp is False
    cuda = torch.device("cuda")  # amp off decides before any CUDA query: the answer on a bf16 GPU, here too
    assert evaluation_precision(cfg.eval.amp, cuda).name == training_precision(cfg.train.amp, cuda).name == "fp32"


def test_early_stopping_reads_the_selection_protocol_s_metric_and_the_record_shows_it(tmp_path, mini_root):
    from click.testing import CliRunner
    from conftest import newest_record

    from sbir_bench.cli import main
    out = tmp_path / "runs"
    result = CliRunner().invoke(main, ["run", "pros", "--config", "mini/pros", "--epochs", "2", "--set",
                                       "train.steps_per_epoch=1", "--set", "train.early_stop=1", "--set",
                                       "train.select_protocol=pros", "--set", "train.select_metric=mAP@200",
                                       "--set", "eval.save_embeddings=false", "--output-dir", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    record = newest_record(out)
    rows = [h for h in record["train"]["history"] if h.get("stage") == SIMULATOR]
    assert all("val_pros:mAP@200" in h and "val_mAP@all" in h for h in rows)
    best = max(rows, key=lambda h: h["val_pros:mAP@200"])  # the first of equals: a later one must be higher
    assert record["train"]["best_epoch"] == best["epoch"]
