"""DePro computes what its official code computes.

The numbers come from running pSGAme/DePro (8608a4f) on ProS's tiny OpenAI-layout CLIP (width 768,
input 224, patch 32: its generator is hard-coded to those) with fixed weights and inputs, for each of
its five run scripts (``tests/fixtures/official/make_depro_fixture.py``, ``official_inputs``); here the
same CLIP is built through open_clip (``test-pros-tiny.json``) and our DePro, under the matching
switches, must give the same prompts, sequences, features, loss terms, gradients and one Adam step, to
1e-4 in fp32; DaTri, the six evaluation variants and the selected one, the rate schedule and the
trainable counts at ViT-B/32 size are checked against the same run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import official_inputs as oi
from official_checks import check, pros_tiny_backbone
import pytest
import torch
from sbir_bench.baselines.depro import DePro, DeProConfig

from sbir_bench.config import TrainConfig
from sbir_bench.methods import TripletBatch
from sbir_bench.methods.losses import domain_aware_triplet
from sbir_bench.retrieval import PRESETS, evaluate
from sbir_bench.training.trainer import build_optimizer, lr_lambda

HERE = Path(__file__).parent
EXPECTED = json.loads((HERE / "fixtures" / "official" / "depro.json").read_text())
# the run scripts as our switches
SWITCHES = {
    "baseline": dict(generator_layers=0, decouple=False, triplet=False, ln_trick=False),
    "baseline_cps": dict(generator_layers=2, decouple=False, triplet=False, ln_trick=False),
    "depro": dict(generator_layers=2, decouple=True, triplet=False, ln_trick=False),
    "depro_ln": dict(generator_layers=2, decouple=True, triplet=False, ln_trick=True),
    "full": dict(generator_layers=2, decouple=True, triplet=True, ln_trick=True),
}
W = 768
# the official tensors we do not build (allocated there, never reached by a gradient), with their shapes
UNUSED = {"visual_encoder.meta_net.specific_domain_prompts": (2, W),
          "visual_encoder.meta_net.specific_class_prompts": (len(oi.CLASS_NAMES), W),
          "visual_encoder.meta_net.vit.conv1.weight": (W, 3, 32, 32),
          "visual_encoder.meta_net.vit.class_embedding": (W,),
          "visual_encoder.meta_net.vit.positional_embedding": (50, W),
          "visual_encoder.meta_net.vit.ln_pre.weight": (W,), "visual_encoder.meta_net.vit.ln_pre.bias": (W,),
          "visual_encoder.meta_net.vit.proj": (W, 512)}
# CLIP's modules the generator holds too: in its state dict under both names, a parameter of CLIP's only once
SHARED = (*(f"visual_encoder.meta_net.{m}" for m in ("conv1", "class_embedding", "positional_embedding", "ln_pre")),
          "visual_udp_generator.promptLearner.")  # the text prompt learner, registered there as well
PREFIXES = [("text_prompt_learner.ctx", "ctx"), ("text_encoder.text_projection", "text_projection"),
            ("visual_udp_generator.prompt_embeddings", "udp"), ("visual_encoder.prompt_embeddings", "cp_seeds"),
            ("visual_encoder.meta_net.vit.", "generator."), ("visual_encoder.meta_net.proj", "generator.proj"),
            ("visual_encoder.class_embedding", "class_embedding"), ("visual_encoder.proj", "image_proj"),
            ("visual_encoder.", "clip.visual."), ("text_encoder.", "clip.")]


@pytest.fixture(scope="module", autouse=True)
def _configs():
    import open_clip
    open_clip.add_model_config(HERE / "fixtures" / "model_configs")


def ours(official: str) -> str:
    for theirs, mine in PREFIXES:
        if official.startswith(theirs):
            return mine + official[len(theirs):]
    raise KeyError(official)


def as_official(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Our ``tensor`` in the official shape: its prompt tables are (1, n, W), ours (n, W)."""
    return tensor.unsqueeze(0) if ours(name) in ("udp", "cp_seeds") else tensor


def depro_tiny(script: str = "full", **overrides) -> DePro:
    """Our DePro on test-pros-tiny under ``script``'s switches, holding the fixture's CLIP and DePro values."""
    backbone = pros_tiny_backbone()
    method = DePro(backbone, EXPECTED["class_names"], list(range(len(oi.CLASS_NAMES))),
                   DeProConfig(**{**SWITCHES[script], **overrides}))
    params = dict(method.named_parameters())
    official = [n for n in oi.depro_own_names(EXPECTED[script]["state_keys"]) if not n.startswith(SHARED)]
    shapes = {n: UNUSED.get(n) or ((1, *params[ours(n)].shape) if ours(n) in ("udp", "cp_seeds")
                                   else tuple(params[ours(n)].shape)) for n in official}
    with torch.no_grad():
        for name, value in oi.weights(shapes, seed=50).items():
            if name not in UNUSED:
                params[ours(name)].copy_(torch.from_numpy(value).reshape(params[ours(name)].shape))
    return method


def inputs():
    images = torch.from_numpy(oi.images(oi.DEPRO_IMAGES, seed=90, size=224))
    labels = torch.tensor([EXPECTED["class_names"].index(c) for c in EXPECTED["inputs"]["classes"]])
    domains = torch.tensor([EXPECTED["domains"].index(d) for d in EXPECTED["inputs"]["domains"]])
    return images, labels, domains


def test_text_prompts_equal_the_official_code():
    method = depro_tiny()
    full = EXPECTED["full"]
    assert method.text_prompts.ids.tolist() == full["token_ids"]
    assert method.text_prompts.prefix_index.tolist() == full["prefix_index"]
    ids = method.tokenize([f"a photo of a {c.replace('_', ' ')}." for c in oi.CLASS_NAMES])
    assert ids.tolist() == full["fixed_token_ids"]
    with torch.no_grad():
        fixed = method.backbone.model.encode_text(ids)
    check(fixed, full["fixed_text"])  # the official fixed texts: CLIP's encode_text, then normalised in forward
    torch.testing.assert_close(method.fixed_text, torch.nn.functional.normalize(fixed.float(), dim=-1))
    with torch.no_grad():
        check(method.class_text_features(), full["learned_text"])


# the full method in the quick loop, its four other run scripts in the whole suite (CI)
SCRIPTS = [s if s == "full" else pytest.param(s, marks=pytest.mark.slow) for s in SWITCHES]


@pytest.mark.parametrize("script", SCRIPTS)
def test_prompts_sequences_and_features_equal_the_official_code(script):
    method = depro_tiny(script)
    expected = EXPECTED[script]
    images, _, _ = inputs()
    v = method.clip.visual
    with torch.no_grad():
        patches = torch.cat([method.cp_seeds.expand(len(images), -1, -1),
                             v.conv1(images).flatten(2).transpose(1, 2) + v.positional_embedding[1:]], 1)
        if script == "full":
            check(patches, expected["generator_input"])
        check(method.class_prompts(patches[:, method.config.n_prompts:]), expected["cps"])
        x1, x2 = method.sequences(images)
        check(x1, expected["x1_sequence"])
        check(x2, expected["x2_sequence"])
        check(method.clip_feature(x1), expected["x1"])
        check(method.clip_feature(x2), expected["x2"])
        check(method.class_text_features(), expected["learned_text"])
    assert expected["out_order"] == (0 if method.config.ln_trick else 1)


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_run_script_trains_what_the_official_code_trains(script):
    """Loss terms, the gradient of every trainable tensor, which get none, one Adam step, the loss after."""
    method = depro_tiny(script)
    expected = EXPECTED[script]
    images, labels, domains = inputs()
    optimizer = build_optimizer(method, TrainConfig(lr=EXPECTED["step_lr"], weight_decay=0.0))  # AdamW, no decay
    official = expected["optimizer"]
    assert (official["weight_decay"], official["eps"], tuple(official["betas"])) == (0.0, 1e-8, (0.9, 0.999))
    for group in optimizer.param_groups:  # the fixture's step raises eps on both sides (make_pros_fixture.py)
        group["eps"] = EXPECTED["step_eps"]
    optimizer.zero_grad()
    terms = method.objective(images, labels, domains)
    losses = expected["losses"]
    assert float(terms["loss"].detach()) == pytest.approx(losses["loss"], abs=1e-5)
    assert float(terms["cls"]) == pytest.approx(losses["cls"], abs=1e-5)
    assert float(terms["triplet"]) == pytest.approx(losses["triplet"] + losses.get("triplet_fixed", 0.0), abs=1e-5)
    if method.config.decouple:
        assert float(terms["cls_fixed"]) == pytest.approx(losses["cls_fixed"], abs=1e-5)
    terms["loss"].backward()
    params = dict(method.named_parameters())
    for name, grad in expected["grads"].items():
        check(as_official(name, params[ours(name)].grad), grad)
    assert set(expected["no_grad"]) <= set(UNUSED)  # only the tensors we do not build go without
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable == {ours(n) for n in expected["grads"]}
    optimizer.step()
    for name, value in expected["after_step"].items():
        check(as_official(name, params[ours(name)]), value)
    with torch.no_grad():
        assert float(method.objective(images, labels, domains)["loss"]) == pytest.approx(expected["loss_after_step"],
                                                                                         abs=1e-5)


@pytest.mark.parametrize("case", ["mixed", "one_class", "no_cross_domain", "ties"])
def test_datri_equals_the_official_loss(case):
    c = EXPECTED["datri"][case]
    loss = domain_aware_triplet(torch.tensor(c["features"]), torch.tensor(c["labels"]), torch.tensor(c["domains"]))
    assert float(loss) == pytest.approx(c["loss"], abs=1e-6)


def test_the_reported_embedding_is_the_normalised_concatenation():
    """Its evaluate scores six variants and reports (and selects on) the normalised [x2, x1]; our
    ``concat`` embedding scored by the ``pros`` preset gives its printed numbers, ``learned`` and ``fixed``
    its single-branch ones."""
    e = EXPECTED["evaluation"]
    norm = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    x1 = {k: norm(np.asarray(v, np.float32)) for k, v in e["x1"].items()}
    x2 = {k: norm(np.asarray(v, np.float32)) for k, v in e["x2"].items()}
    ql, gl = np.asarray(e["query_labels"]), np.asarray(e["gallery_labels"])
    for variant, q, g in (("concat", np.hstack([x2["q"], x1["q"]]), np.hstack([x2["g"], x1["g"]])),
                          ("learned", x2["q"], x2["g"]), ("fixed", x1["q"], x1["g"])):
        result = evaluate(q, g, ql, gl, protocol=PRESETS["pros"]).metrics
        official = e["variants"][variant]
        assert result["mAP@200"] == pytest.approx(official["mAP@200"], abs=1e-6)
        assert result["P@200"] == pytest.approx(official["prec@200"], abs=1e-6)
    assert e["selected"] == [e["variants"]["concat"]["mAP@200"], e["variants"]["concat"]["prec@200"]]


def test_embedding_is_1024_dimensional_and_the_same_for_both_modalities():
    method = depro_tiny()
    images, _, _ = inputs()
    with torch.no_grad():
        x1, x2 = (torch.nn.functional.normalize(method.clip_feature(x), dim=-1) for x in method.sequences(images))
    out = method.embed_sketches(images)
    torch.testing.assert_close(out, torch.cat([x2, x1], dim=-1))
    torch.testing.assert_close(method.embed_photos(images), out)
    method.config.embedding = "fixed"
    torch.testing.assert_close(method.embed_photos(images), x1)


def test_rate_is_the_official_decay():
    f = lr_lambda(TrainConfig(lr=1e-4, schedule="exponential-epoch"), steps_per_epoch=3)
    np.testing.assert_allclose([1e-4 * f(3 * e + 1) for e in range(len(EXPECTED["lr"]))], EXPECTED["lr"], rtol=1e-12)


SIZES = {"domainnet": (300, 5), "sketchy": (104, 2), "tuberlin": (220, 2), "tuberlin_depro25": (225, 2)}


@pytest.mark.parametrize("dataset", [d if d == "sketchy" else pytest.param(d, marks=pytest.mark.slow) for d in SIZES])
def test_trainable_counts_at_vit_b32(dataset):
    """The official counts less the values it allocates and never reaches with a gradient (768 per domain
    and class row, 2,793,216 in the generator's unused input and output layers): 15,495,424 for the full
    method and 662,784 for baseline.sh on every dataset (field note §8)."""
    from sbir_bench.sizing import meta_method
    n_classes, n_domains = SIZES[dataset]
    names = [f"c{i}" for i in range(n_classes)]
    counts = {}
    for script in ("baseline", "baseline_cps", "full"):
        method = meta_method("depro", SWITCHES[script], "ViT-B-32", names, list(range(n_classes)))
        unused = 0 if script == "baseline" else 768 * (n_domains + n_classes) + 2_793_216
        counts[script] = method.n_trainable()
        assert counts[script] == EXPECTED["trainable"][f"{dataset}/{script}"]["count"] - unused
    assert (counts["baseline"], counts["full"]) == (662_784, 15_495_424)
    if dataset == "sketchy":
        method = meta_method("depro", {}, "ViT-B-32", names, list(range(n_classes)))
        built = {n for n, p in method.named_parameters() if p.requires_grad}
        official = {ours(n) for n in EXPECTED["trainable"]["sketchy/full"]["names"] if n not in UNUSED
                    and not n.startswith(("visual_encoder.meta_net.specific", "visual_encoder.meta_net.vit.conv1"))}
        assert built == official


def test_a_break_turns_the_fixture_comparisons_red():
    """Each comparison can fail: the class token pooled without ln_trick changes x1, same-domain positives
    change DaTri, an unnormalised concatenation changes the reported numbers, the decoupling term left out
    changes the loss."""
    method = depro_tiny("depro")
    images, labels, domains = inputs()
    method.config.ln_trick = True  # pools token 0; the rest unchanged
    with torch.no_grad(), pytest.raises(AssertionError):
        check(method.clip_feature(method.sequences(images)[0]), EXPECTED["depro"]["x1"])
    c = EXPECTED["datri"]["no_cross_domain"]
    same = domain_aware_triplet(torch.tensor(c["features"]), torch.tensor(c["labels"]), torch.zeros(4, dtype=torch.long))
    assert float(same) == pytest.approx(c["loss"], abs=1e-6)  # no positive at all: 0 both ways
    mixed = EXPECTED["datri"]["mixed"]
    f, y = torch.tensor(mixed["features"]), torch.tensor(mixed["labels"])
    assert float(domain_aware_triplet(f, y, torch.arange(8))) != pytest.approx(mixed["loss"], abs=1e-4)
    e = EXPECTED["evaluation"]
    q = np.hstack([np.asarray(e["x2"]["q"]), np.asarray(e["x1"]["q"])])
    g = np.hstack([np.asarray(e["x2"]["g"]), np.asarray(e["x1"]["g"])])
    raw = evaluate(q, g, np.asarray(e["query_labels"]), np.asarray(e["gallery_labels"]), protocol=PRESETS["pros"])
    assert raw.metrics["mAP@200"] != pytest.approx(e["variants"]["concat"]["mAP@200"], abs=1e-4)
    method = depro_tiny("depro", decouple=False)
    with torch.no_grad():
        assert float(method.objective(images, labels, domains)["loss"]) != pytest.approx(
            EXPECTED["depro"]["losses"]["loss"], abs=1e-3)


def test_training_batch_is_sketches_then_their_photos_with_domains():
    """The anchors' domain indices (DomainNet's query side holds four) shift by one; photos are domain 0."""
    method = depro_tiny("baseline")
    seen = []
    method.objective = lambda images, labels, domains: seen.append((images.shape[0], labels.tolist(), domains.tolist()))
    x = torch.zeros(2, 3, 224, 224)
    method.loss(TripletBatch(x, x + 1, x + 2, torch.tensor([3, 4]), torch.tensor([0, 1])))
    method.loss(TripletBatch(x, x + 1, x + 2, torch.tensor([3, 4]), torch.tensor([0, 1]), domain=torch.tensor([2, 0])))
    assert seen == [(4, [3, 4, 3, 4], [1, 1, 0, 0]), (4, [3, 4, 3, 4], [3, 1, 0, 0])]


def test_the_callers_backbone_is_never_changed():
    method = depro_tiny()
    handed = method.backbone.model
    assert method.clip is not handed and not any(p.requires_grad for p in handed.parameters())
    ln = method.clip.visual.ln_pre.weight
    assert ln.requires_grad and ln is not handed.visual.ln_pre.weight
    with torch.no_grad():
        ln.add_(1.0)
    assert not torch.equal(ln, handed.visual.ln_pre.weight)
    assert method.clip.token_embedding is handed.token_embedding  # what it does not train stays shared
    state = method.trainable_state()
    assert "clip.visual.ln_pre.weight" in state and "clip.ln_final.weight" in state and "fixed_text" not in state


@pytest.mark.parametrize("method", ["depro", "pros"])
def test_domainnet_sketch_and_quickdraw_images_are_inverted_as_its_loader_does(method, tmp_path):
    """Its loader (ProS's) inverts the images of the domains named sketch or quickdraw: on DomainNet's
    mixed query side, per image, in training triplets and in the test embedding alike; other domains and
    the real photos as stored."""
    from PIL import Image

    from sbir_bench.data.discovery import Sample
    from sbir_bench.data.images import ImageList
    from sbir_bench.data.triplets import TripletDataset
    from sbir_bench.methods import get_method
    white = tmp_path / "white.png"
    Image.new("RGB", (8, 8), (255, 255, 255)).save(white)
    mean = lambda im: torch.tensor(float(np.asarray(im).mean()))  # noqa: E731
    cls = get_method(method)
    train, evaluation = cls.sketch_transforms(cls.config_class(), "domainnet", mean, mean)
    samples = [Sample(str(white), 0, domain=d) for d in ("sketch", "quickdraw", "clipart", "painting")]
    assert [float(x) for x, _ in ImageList(samples, evaluation)] == [0.0, 0.0, 255.0, 255.0]
    triplets = TripletDataset(samples, [Sample(str(white), 0, domain="real")], [0], transform=mean,
                              sketch_transform=train)
    assert [float(triplets[i][0]) for i in range(4)] == [0.0, 0.0, 255.0, 255.0]
    assert [float(triplets[i][1]) for i in range(4)] == [255.0] * 4  # the photos never
    # the domains as the official dictionary numbers them: sorted names of the training domains, real included
    assert [(int(triplets[i][5]), int(triplets[i][6])) for i in range(4)] == [(4, 3), (2, 3), (0, 3), (1, 3)]
    none, _ = cls.sketch_transforms(cls.config_class(invert_sketches="none"), "domainnet", mean, mean)
    assert [float(x) for x, _ in ImageList(samples, none)] == [255.0] * 4
