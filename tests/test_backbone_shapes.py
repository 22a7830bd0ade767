"""Every method on backbones unlike sbir-tiny: towers of unequal width and depth (a transposed
dimension or a misaligned layer fails here, where sbir-tiny's all-64 equal towers hide it), and a
ResNet image tower (visual-prompt methods refuse it in one line; the others run)."""

from __future__ import annotations

import math
from pathlib import Path

import open_clip
import pytest
import torch
from click.testing import CliRunner

from sbir_bench.cli import main
from sbir_bench.methods import METHODS, TripletBatch, get_method, load_builtin_methods
from sbir_bench.models import load_backbone
from sbir_bench.baselines.clip_at import trainable_clip_parameters
from sbir_bench.splip.method import PHOTO, text_layer_for

CONFIGS = Path(__file__).parent / "fixtures" / "model_configs"
NAMES = ["t-shirt", "hot_air_balloon", "cup", "star", "kite"]
SEEN = [0, 1, 2]


@pytest.fixture(scope="module", autouse=True)
def _test_configs():
    from sbir_bench.models.backbone_configs import register_configs
    register_configs()
    open_clip.add_model_config(CONFIGS)


def backbone(name: str):
    torch.manual_seed(0)
    return load_backbone(name, "random")


def batch(size: int, n: int = 3) -> TripletBatch:
    g = torch.Generator().manual_seed(1)
    img = lambda: torch.randn(n, 3, size, size, generator=g)  # noqa: E731
    return TripletBatch(img(), img(), img(), torch.tensor([0, 1, 2][:n]), torch.tensor([1, 2, 0][:n]))


def all_methods():
    load_builtin_methods()
    return METHODS.names()


def embed(method, images: torch.Tensor) -> torch.Tensor:
    method.eval()
    method.prepare_eval(NAMES)
    return torch.cat([method.embed_sketches(images), method.embed_photos(images)])


@pytest.mark.parametrize("name", all_methods())
def test_every_method_trains_checkpoints_and_embeds_on_unequal_towers(name, tmp_path):
    bb = backbone("test-unequal")
    p_v, p_t = bb.model.visual.transformer.resblocks, bb.model.transformer.resblocks
    assert (len(p_v), len(p_t), bb.model.visual.conv1.out_channels, bb.embed_dim) == (6, 3, 48, 24)
    cls = get_method(name)
    torch.manual_seed(0)
    method = cls(bb, NAMES, SEEN)
    images = batch(32).sketch
    if method.trainable:
        method.train()
        opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
        before = {k: v.clone() for k, v in method.trainable_state().items()}
        loss = method.loss(batch(32))["loss"]
        assert torch.isfinite(loss)
        loss.backward()
        # the backbone it was handed stays frozen; CLIP-AT trains, in its own copy of the image tower,
        # the parameters its official code trains, DePro every LayerNorm of its copies of both towers
        assert not {n for n, p in bb.model.named_parameters() if p.grad is not None}
        trained_clip = {n for n, p in method.clip.named_parameters() if p.grad is not None}
        expected = {f"visual.{n}" for n, _ in trainable_clip_parameters(bb.model.visual, "official")} \
            if name == "clip-at" else set()
        if name == "depro":
            expected = {f"{m}.{n}" for m, module in bb.model.named_modules() if isinstance(module, torch.nn.LayerNorm)
                        for n, _ in module.named_parameters()}
        assert trained_clip == expected
        opt.step()
        after = method.trainable_state()
        assert any(not torch.equal(before[k], after[k]) for k in before)
    out = embed(method, images)
    assert out.shape[0] == 6 and torch.isfinite(out).all()
    torch.save(method.trainable_state(), tmp_path / "state.pt")
    torch.manual_seed(123)  # another init: only the checkpoint can make the embeddings equal
    again = cls(bb, NAMES, SEEN)
    again.load_trainable_state(torch.load(tmp_path / "state.pt", weights_only=True))
    assert torch.allclose(embed(again, images), out, atol=1e-6)


def test_text_layer_mapping_for_unequal_towers():
    assert [text_layer_for(j, 24, 12) for j in range(24)] == [k // 2 for k in range(24)]  # ViT-L-14
    assert [text_layer_for(j, 12, 12) for j in range(12)] == list(range(12))  # ViT-B
    assert [text_layer_for(j, 32, 24) for j in (0, 3, 31)] == [0, 2, 23]  # ViT-H-14
    for lv, lt in ((24, 12), (6, 3), (32, 24), (3, 6)):  # a second formula: the last layer reads the last
        assert [text_layer_for(j, lv, lt) for j in range(lv)] == [math.ceil((j + 1) * lt / lv) - 1 for j in range(lv)]
        assert text_layer_for(lv - 1, lv, lt) == lt - 1


def test_splip_prompts_every_visual_layer_from_its_mapped_text_layer():
    method = get_method("splip")(backbone("test-unequal"), NAMES, SEEN)
    assert method.depth == 6 and method.text_layer_of == [0, 0, 1, 1, 2, 2]
    with torch.no_grad():
        enc = method.encode(batch(32).sketch, PHOTO)
        assert len(enc.visual_prompts) == 6
        for j, prompts in enumerate(enc.visual_prompts):
            text = enc.prefix.outputs[[0, 0, 1, 1, 2, 2][j]]
            pooled = method.b_vt.pool(text)
            expected = method.b_vt.proj(pooled) + method.b_vt.layer_offset[j]
            assert torch.allclose(prompts[:, -2:], expected, atol=1e-6)
        t = enc.text_tokens
        for layer_input in enc.prefix.inputs[1:]:  # T re-enters all 3 text layers
            assert torch.equal(layer_input[:, 1: 5], t)


def test_maple_couples_layer_i_with_layer_i_up_to_the_shallower_tower():
    method = get_method("maple")(backbone("test-unequal"), NAMES, SEEN)
    assert method.depth == 3
    text, vision = method.prompt_stacks()
    assert [v.shape for v in vision] == [torch.Size([2, 48])] * 3 and [t.shape for t in text] == [torch.Size([2, 32])] * 3


def methods_prompting_images(prompting: bool) -> list:
    return [m for m in all_methods() if get_method(m).prompts_image_encoder == prompting]


def test_the_visual_prompt_methods_are_the_ones_we_know():
    assert methods_prompting_images(True) == ["clip-at", "depro", "maple", "pros", "splip", "ucdr-adapter"]
    assert methods_prompting_images(False) == ["cocoop", "coop", "linear-probe", "zeroshot-clip"]


@pytest.mark.parametrize("name", methods_prompting_images(False))
def test_resnet_backbone_runs_methods_without_visual_prompts(name):
    bb = backbone("test-tiny-rn")
    method = get_method(name)(bb, NAMES, SEEN)
    if method.trainable:
        method.loss(batch(32))["loss"].backward()
    assert torch.isfinite(embed(method, batch(32).sketch)).all()


@pytest.mark.parametrize("name", methods_prompting_images(True))
def test_resnet_backbone_is_refused_by_visual_prompt_methods_in_one_line(name, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", name, "--backbone", "test-tiny-rn", "--pretrained", "random",
                                       "--output-dir", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "needs a ViT backbone" in lines[0] and "Traceback" not in result.output
    assert not out.exists()
