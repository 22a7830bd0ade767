"""SpLIP: block shapes, where gradients go, the adaptive margin formula, the jigsaw target, ablations,
and an end-to-end run on a QuickDraw-Ext tree."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from sbir_bench.cli import main
from sbir_bench.methods import TripletBatch
from splip import SpLIP, SpLIPConfig
from splip.objectives import adaptive_margin_matrix, jigsaw_permutations, shuffle_tiles, triplet_margins

SEEN = list(range(6))
NAMES = ["star", "heart", "moon", "tree", "fish", "key", "bell"]


def make(tiny_backbone, **cfg) -> SpLIP:
    torch.manual_seed(0)
    return SpLIP(tiny_backbone, NAMES, SEEN, SpLIPConfig(**cfg))


def batch(n: int = 4) -> TripletBatch:
    g = torch.Generator().manual_seed(0)
    images = lambda: torch.randn(n, 3, 64, 64, generator=g)
    return TripletBatch(images(), images(), images(), torch.tensor([0, 1, 2, 3][:n]), torch.tensor([1, 2, 3, 3][:n]))


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_block_shapes(tiny_backbone):
    m = make(tiny_backbone)
    p, b = m.prompted, 3
    images = torch.randn(b, 3, 64, 64)
    emb = p.patch_embeddings(images)
    assert emb.shape == (b, 1 + 16, p.vision_width)
    assert m.prompts.b_v(m.prompts.phrases[0]).shape == (4, p.vision_width)
    assert m.prompts.b_t(emb).shape == (b, 4, p.text_width)
    shallow, deep = m.prompts.visual_stack(torch.zeros(b, dtype=torch.long), emb)
    assert shallow.shape == (b, 4, p.vision_width)
    assert deep[0] is None and len(deep) == m.prompts.depth == 4
    assert all(d.shape == (b, 4, p.vision_width) for d in deep[1:])
    assert m.encode(images, 0).shape == (b, tiny_backbone.embed_dim)
    assert m.class_text(NAMES).shape == (len(NAMES), tiny_backbone.embed_dim)


def test_modalities_use_their_own_phrase_prompts(tiny_backbone):
    m = make(tiny_backbone)
    images = torch.randn(2, 3, 64, 64)
    assert not torch.allclose(m.embed_sketches(images), m.embed_photos(images))


def test_gradients_reach_only_splip_parameters(tiny_backbone):
    m = make(tiny_backbone)
    m.loss(batch())["loss"].backward()
    assert all(p.grad is None for p in m.clip.parameters())
    trainable = {n: p for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith(("clip.", "prompted.clip.")) for n in trainable)
    missing = [n for n, p in trainable.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient reached {missing}"


def test_adaptive_margin_formula_on_hand_made_text():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    matrix = adaptive_margin_matrix(text, scale=0.5)
    expected = 0.5 * torch.tensor([[0.0, 1.0, 1 - 2 ** -0.5], [1.0, 0.0, 1 - 2 ** -0.5],
                                   [1 - 2 ** -0.5, 1 - 2 ** -0.5, 0.0]])
    assert torch.allclose(matrix, expected, atol=1e-6)
    margins = triplet_margins(matrix, torch.tensor([0, 0, 2]), torch.tensor([1, 0, 1]), same_class_margin=0.2)
    assert torch.allclose(margins, torch.tensor([0.5, 0.2, 0.5 * (1 - 2 ** -0.5)]))


def test_method_uses_clip_text_margins(tiny_backbone):
    m = make(tiny_backbone, margin_scale=2.0)
    text = m.frozen_class_text(m.seen_names)
    assert torch.allclose(m.margin_matrix, 2.0 * (1 - text @ text.t()), atol=1e-5)


def test_jigsaw_target_is_the_permutation_applied():
    grid = 3
    ids = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3)
    images = ids.repeat_interleave(4, 2).repeat_interleave(4, 3).expand(2, 3, 12, 12).clone()  # tile i has value i
    perms = jigsaw_permutations(grid, 5)
    assert perms.shape == (5, 9) and len({tuple(p.tolist()) for p in perms}) == 5
    assert not (perms == torch.arange(9)).all(1).any()
    chosen = perms[torch.tensor([3, 1])]
    out = shuffle_tiles(images, chosen, grid)
    tiles = out[:, 0, ::4, ::4].reshape(2, 9)  # value at each output tile = index of the input tile shown
    assert torch.equal(tiles.long(), chosen)


@pytest.mark.parametrize("switch,removed", [("use_bt", "prompts.b_t."), ("use_bvt", "prompts.b_vt."),
                                            ("jigsaw", "jigsaw_head.")])
def test_ablation_switches_change_parameters(tiny_backbone, switch, removed):
    full, ablated = make(tiny_backbone), make(tiny_backbone, **{switch: False})
    names_full = {n for n, p in full.named_parameters() if p.requires_grad}
    names_ablated = {n for n, p in ablated.named_parameters() if p.requires_grad}
    assert any(n.startswith(removed) for n in names_full)
    assert not any(n.startswith(removed) for n in names_ablated)
    if switch == "use_bvt":  # deep visual prompts become free parameters: (depth-1) x n x Dv
        extra = (full.prompts.depth - 1) * 4 * full.prompted.vision_width
        lost = sum(p.numel() for n, p in full.named_parameters() if n.startswith(removed))
        assert n_params(ablated) == n_params(full) - lost + extra
    else:
        assert n_params(ablated) < n_params(full)


def test_ablation_switches_change_loss_terms(tiny_backbone):
    full = make(tiny_backbone).loss(batch())
    assert {"cls", "triplet", "jigsaw", "margin"} <= set(full)
    assert float(full["margin"]) != pytest.approx(0.2)  # adaptive: depends on the classes
    fixed = make(tiny_backbone, adaptive_margin=False).loss(batch())
    assert float(fixed["margin"]) == pytest.approx(0.2)
    no_js = make(tiny_backbone, jigsaw=False).loss(batch())
    assert "jigsaw" not in no_js
    assert float(no_js["loss"].detach()) == pytest.approx(float(no_js["cls"] + no_js["triplet"]), rel=1e-5)


def test_fine_grained_same_class_negatives_use_fixed_margin(tiny_backbone):
    m = make(tiny_backbone)
    b = batch()
    b.negative_label = b.label.clone()
    assert float(m.loss(b)["margin"]) == pytest.approx(0.2)


def test_splip_on_quickdraw_tree_gzs(make_tree, tmp_path):
    root = make_tree("quickdraw")
    out = tmp_path / "runs"
    result = CliRunner().invoke(main, ["run", "splip", "--dataset", "quickdraw", "--setting", "gzs", "--data-root",
                                       str(root), "--epochs", "1", "--batch-size", "8", "--set", "train.steps_per_epoch=2",
                                       "--output-dir", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads(next(out.glob("*.json")).read_text())
    assert record["method"] == "splip" and record["setting"] == "gzs" and record["classes"]["unseen"] == 30
    assert record["train"]["history"][0]["jigsaw"] > 0
    assert set(record["metrics"]) == {f"{m}{g}" for m in ("mAP@all", "mAP@200", "P@100", "P@200")
                                      for g in ("", "/seen", "/unseen", "/H")}
