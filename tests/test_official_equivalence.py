"""CLIP-AT and CoCoOp compute what their official code computes.

The numbers come from running the official repositories (aneeshan95/Sketch_LVM at HEAD and before
its 2023-08-01 commit, KaiyangZhou/CoOp's ``trainers/cocoop.py``) on a tiny OpenAI-layout CLIP with
fixed weights and inputs (``tests/fixtures/official/make_fixtures.py``, ``official_inputs``); here
the same CLIP is built through open_clip and our methods must give the same features, losses,
gradients, trainable parameters and first optimiser step, to 1e-4 in fp32.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

import official_inputs as oi
from sbir_bench.baselines.clip_at import CLIPAT, CLIPATConfig
from sbir_bench.baselines.cocoop import CoCoOp, CoCoOpConfig
from sbir_bench.config import TrainConfig
from sbir_bench.training.trainer import build_optimizer
from sbir_bench.methods import TripletBatch
from sbir_bench.models import load_backbone
from sbir_bench.models.preprocess import preprocess_config

HERE = Path(__file__).parent
FIXTURES = HERE / "fixtures" / "official"
TOL = dict(rtol=1e-4, atol=1e-4)


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


@pytest.fixture(scope="module", autouse=True)
def _configs():
    from sbir_bench.models.backbone_configs import register_configs
    register_configs()
    open_clip.add_model_config(HERE / "fixtures" / "model_configs")


def openai_tiny(expected_keys=None):
    """test-openai-tiny through open_clip, holding the fixture's weights (same names, same values)."""
    backbone = load_backbone("test-openai-tiny", "random")
    state = backbone.model.state_dict()
    if expected_keys is not None:  # a different key set would shift every generated value
        assert sorted(state) == [k.removeprefix("clip.") for k in expected_keys]
    values = oi.weights({k: tuple(v.shape) for k, v in state.items()})
    backbone.model.load_state_dict({k: torch.from_numpy(v) for k, v in values.items()}, strict=True)
    return backbone


def images(seed: int) -> torch.Tensor:
    return torch.from_numpy(oi.images(oi.N_IMAGES, seed))


# ---------------------------------------------------------------------------------------- CLIP-AT
OFFICIAL_NAMES = {"sketch_prompt": "sk_prompt", "photo_prompt": "img_prompt"}


def clip_at(position: str, expected: dict) -> CLIPAT:
    args = dict(zip(expected["args"][::2], expected["args"][1::2]))
    backbone = openai_tiny(expected["clip_state_keys"])
    method = CLIPAT(backbone, oi.CLASS_NAMES, [0, 1, 2], CLIPATConfig(
        n_prompts=int(args["--n_prompts"]), prompt_position=position, clip_lr=float(args["--clip_LN_lr"])))
    with torch.no_grad():
        method.sketch_prompt.copy_(torch.from_numpy(oi.prompt_values(oi.N_PROMPTS, 64, seed=10)))
        method.photo_prompt.copy_(torch.from_numpy(oi.prompt_values(oi.N_PROMPTS, 64, seed=11)))
    return method


def clip_at_features(method: CLIPAT, sk, pos, neg) -> dict:
    with torch.no_grad():
        return {"sketch": method.embed_sketches(sk), "photo": method.embed_photos(pos),
                "negative": method.embed_photos(neg)}


def assert_features(ours: dict, official: dict) -> None:
    for key, value in official.items():  # the official features are not normalised; the retrieval is cosine
        torch.testing.assert_close(ours[key], F.normalize(tensor(value), dim=-1), **TOL)


@pytest.mark.parametrize("position", ["append", "prepend"])
def test_clip_at_equals_the_official_code(position):
    expected = fixture(f"clip_at_{position}.json")
    method = clip_at(position, expected)
    sk, pos, neg = images(20), images(21), images(22)
    assert_features(clip_at_features(method, sk, pos, neg), expected["before"])

    batch = TripletBatch(sk, pos, neg, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long))
    loss = method.loss(batch)["loss"]
    assert float(loss.detach()) == pytest.approx(expected["loss"], abs=1e-5)

    optimizer = build_optimizer(method, TrainConfig(lr=float(expected["args"][-1]), weight_decay=0.0))
    optimizer.zero_grad()
    loss.backward()
    trained = {OFFICIAL_NAMES.get(n, n) for n, p in method.named_parameters() if p.grad is not None}
    assert trained == set(expected["receives_grad"])  # exactly what the official helper leaves trainable
    optimizer.step()
    assert_features(clip_at_features(method, sk, pos, neg), expected["after_one_step"])
    assert float(method.loss(batch)["loss"]) == pytest.approx(expected["loss_after_one_step"], abs=1e-5)


def test_clip_at_layernorm_only_trains_the_layernorms_and_the_prompts():
    backbone = openai_tiny()
    method = CLIPAT(backbone, oi.CLASS_NAMES, [0, 1, 2], CLIPATConfig(trainable="layernorm"))
    names = {n for n, p in method.named_parameters() if p.requires_grad}
    assert {"sketch_prompt", "photo_prompt"} <= names
    assert all(n in ("sketch_prompt", "photo_prompt") or ".ln_" in n for n in names)
    assert len(names) == 2 + 2 * (2 + 2 * 2)  # ln_pre, ln_post, ln_1 and ln_2 of 2 blocks, weight and bias each


def test_clip_at_preprocessing_equals_the_official_transform():
    expected = tensor(fixture("clip_at_append.json")["preprocessed"])
    pp = preprocess_config(openai_tiny().preprocess_cfg)
    train, evaluation = CLIPAT.image_transforms(CLIPATConfig(), pp, crop_scale_min=0.5)
    image = oi.pil_image(30).convert("RGB")
    torch.testing.assert_close(evaluation(image), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(train(image), expected, rtol=0, atol=1e-6)  # no augmentation, as the code
    backbone_train, _ = CLIPAT.image_transforms(CLIPATConfig(preprocess="backbone"), pp, crop_scale_min=0.5)
    assert "RandomResizedCrop" in repr(backbone_train)


# ---------------------------------------------------------------------------------------- CoCoOp
def cocoop(expected: dict) -> CoCoOp:
    method = CoCoOp(openai_tiny(), expected["class_names"], list(range(len(expected["class_names"]))),
                    CoCoOpConfig(ctx_init=expected["config"]["CTX_INIT"]))
    shapes = {k: tuple(v.shape) for k, v in method.meta_net.state_dict().items()}
    values = oi.weights(shapes, seed=40)
    method.meta_net.load_state_dict({k: torch.from_numpy(v) for k, v in values.items()})
    return method


def test_cocoop_equals_the_official_code():
    expected = fixture("cocoop.json")
    method = cocoop(expected)
    torch.testing.assert_close(method.ctx.detach(), tensor(expected["ctx_init"]), **TOL)
    trainable = {f"prompt_learner.{n}" for n, p in method.named_parameters() if p.requires_grad}
    assert trainable == set(expected["requires_grad"])

    x = images(41)
    feats = method.frozen_image_features(x)
    with torch.no_grad():
        torch.testing.assert_close(method.logits(feats, expected["class_names"]), tensor(expected["logits"]), **TOL)

    label = torch.tensor(expected["labels"])
    batch = TripletBatch(x, x, x, label, label)  # sketch and positive halves alike: the same mean CE
    loss = method.loss(batch)["loss"]
    assert float(loss) == pytest.approx(expected["loss"], abs=1e-5)
    loss.backward()
    for name, grad in expected["grads"].items():
        ours = dict(method.named_parameters())[name.removeprefix("prompt_learner.")].grad
        torch.testing.assert_close(ours, tensor(grad), **TOL)


def test_cocoop_meta_network_has_the_papers_shape():
    method = cocoop(fixture("cocoop.json"))
    dims = [(m.in_features, m.out_features) for m in method.meta_net if isinstance(m, torch.nn.Linear)]
    assert dims == [(32, 32 // 16), (32 // 16, 32)]  # vis_dim -> vis_dim/16 -> ctx_dim (text width 32)
