"""SpLIP as the architecture figure draws it: prompt counts per layer, where each prompt comes from,
where gradients go, the adaptive margin, the conditional jigsaw, the ablation switches, and an
end-to-end run on a QuickDraw-Ext tree."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from sbir_bench.cli import main
from sbir_bench.methods import TripletBatch
from sbir_bench.methods.image_tiles import shuffle_tiles
from sbir_bench.splip import SpLIP, SpLIPConfig
from sbir_bench.splip.method import PHOTO, SKETCH
from sbir_bench.splip.objectives import JigsawHead, adaptive_margin_matrix, conditional_jigsaw, jigsaw_permutations, triplet_margins

SEEN = list(range(6))
NAMES = ["star", "heart", "moon", "tree", "fish", "key", "bell"]


def make(tiny_backbone, **cfg) -> SpLIP:
    torch.manual_seed(0)
    return SpLIP(tiny_backbone, NAMES, SEEN, SpLIPConfig(**cfg))


def batch(n: int = 4) -> TripletBatch:
    g = torch.Generator().manual_seed(0)
    images = lambda: torch.randn(n, 3, 64, 64, generator=g)  # noqa: E731
    return TripletBatch(images(), images(), images(), torch.tensor([0, 1, 2, 3][:n]), torch.tensor([1, 2, 3, 3][:n]))


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_prompt_counts_per_layer(tiny_backbone):
    m = make(tiny_backbone)
    images = torch.randn(3, 3, 64, 64)
    enc = m.encode(images, SKETCH)
    assert m.depth == m.prompted.vision_layers == 4  # every layer, as the figure draws 1 .. L
    assert len(enc.visual_prompts) == m.depth
    assert all(p.shape == (3, 4 + 2, m.prompted.vision_width) for p in enc.visual_prompts)  # 4 V^tg + 2 V^ms
    assert enc.text_tokens.shape == (3, 4, m.prompted.text_width)  # 4 T tokens
    width = m.prompted.vision_width
    with torch.no_grad():  # B_v with known weights: V^tg is then its bias, as 4 tokens (hand-computable)
        m.b_v.proj.weight.zero_()
        m.b_v.proj.bias.copy_(torch.arange(4 * width, dtype=torch.float32))
    vtg = torch.arange(4 * width, dtype=torch.float32).reshape(4, width)
    for layer in m.encode(images, SKETCH).visual_prompts:  # V^tg: the same 4 tokens at every visual layer
        assert torch.equal(layer[:, :4], vtg.expand(3, -1, -1))
    assert m.encode(images, SKETCH).features.shape == (3, tiny_backbone.embed_dim)


def test_text_tokens_enter_every_text_layer(tiny_backbone):
    m = make(tiny_backbone)
    enc = m.encode(torch.randn(2, 3, 64, 64), PHOTO)
    n, t = m.config.n_text, enc.text_tokens
    first = enc.prefix.inputs[0][:, 1: 1 + n]  # layer 1: T plus the positional embedding of its slots
    assert torch.allclose(first, t + m.clip.positional_embedding[1: 1 + n], atol=1e-6)
    for layer_input in enc.prefix.inputs[1:]:  # deeper layers: the T slots hold T again (dotted arrows)
        assert torch.equal(layer_input[:, 1: 1 + n], t)


def test_vms_of_layer_j_comes_from_text_layer_j(tiny_backbone):
    m = make(tiny_backbone)
    enc = m.encode(torch.randn(2, 3, 64, 64), SKETCH)
    states = [s.detach().requires_grad_(True) for s in enc.prefix.outputs]
    vms = m.b_vt(states)
    for j in range(m.depth):
        grads = torch.autograd.grad(vms[j].sum(), states, allow_unused=True)
        assert grads[j] is not None and grads[j].abs().sum() > 0  # B_vt reads text layer j ...
        assert all(g is None or g.abs().sum() == 0 for k, g in enumerate(grads) if k != j)  # ... and only it
    changed = [s.clone() for s in states]
    changed[1] = changed[1] + 1.0
    after = m.b_vt(changed)
    assert not torch.allclose(after[1], vms[1]) and torch.equal(after[0], vms[0])


def test_text_tokens_and_class_embeddings_depend_on_the_image(tiny_backbone):
    m = make(tiny_backbone)
    with torch.no_grad():
        for p in m.b_t.net[-1].parameters():  # leave the near-zero start so images differ visibly
            p.normal_(std=0.05)
        enc = m.encode(torch.randn(2, 3, 64, 64), PHOTO)
        cls = m.class_embeddings(enc, NAMES)
    assert not torch.allclose(enc.text_tokens[0], enc.text_tokens[1])
    assert cls.shape == (2, len(NAMES), tiny_backbone.embed_dim)
    assert not torch.allclose(cls[0], cls[1])


def test_class_embeddings_equal_the_full_prompt_through_the_text_encoder(tiny_backbone):
    m = make(tiny_backbone)
    with torch.no_grad():
        enc = m.encode(torch.randn(2, 3, 64, 64), SKETCH)
        cached = m.class_embeddings(enc, NAMES)
        ids = tiny_backbone.tokenizer([f"{m.class_prompts[SKETCH].prefix} {n}." for n in NAMES])
        for b in range(2):
            t = enc.text_tokens[b]
            full = m.prompted.encode_text(ids, t, [None] + [t] * (m.depth - 1))
            assert torch.allclose(full, cached[b], atol=1e-5)


def test_sketch_and_photo_class_texts_differ(tiny_backbone):
    m = make(tiny_backbone)
    assert m.class_prompts[SKETCH].prefix.endswith("sketch of a") and m.class_prompts[PHOTO].prefix.endswith("photo of a")
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        as_sketch = m.class_embeddings(m.encode(image, SKETCH), NAMES)
        as_photo = m.class_embeddings(m.encode(image, PHOTO), NAMES)
    assert not torch.allclose(as_sketch, as_photo)
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
    assert torch.allclose(m.margin_matrix, adaptive_margin_matrix(text, scale=2.0), atol=1e-6)  # CLIP's own text


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


def test_conditional_jigsaw_on_hand_counted_logits():
    """A head that answers [0, ln 3] for the positive photo and [ln 3, 0] for the negative one, target 1:
    the positive term is -ln(3/4) (softmax 1/4, 3/4), the negative one the probability 1/4 of the true
    permutation under the negative photo; the negative photo enters the loss."""
    import math

    def head(shuffled, photo):
        pos = torch.tensor([0.0, math.log(3.0)])
        return (pos if photo[0, 0] > 0 else pos.flip(0)).expand(len(photo), 2) + 0 * photo[:, :1]
    shuffled, pos, neg, target = torch.zeros(2, 4), torch.ones(2, 4), -torch.ones(2, 4), torch.tensor([1, 1])
    terms = conditional_jigsaw(head, shuffled, pos, neg, target, negative_weight=1.0)
    assert float(terms["jigsaw"]) == pytest.approx(-math.log(0.75) + 0.25, abs=1e-6)
    assert float(terms["jigsaw_neg"]) == pytest.approx(0.25, abs=1e-6)
    assert float(terms["jigsaw_acc"]) == 1.0
    half = conditional_jigsaw(head, shuffled, pos, neg, target, negative_weight=0.5)
    assert float(half["jigsaw"]) == pytest.approx(-math.log(0.75) + 0.125, abs=1e-6)
    only_pos = conditional_jigsaw(head, shuffled, pos, neg, target, negative_weight=0.0)
    assert float(only_pos["jigsaw"]) == pytest.approx(-math.log(0.75), abs=1e-6) and "jigsaw_neg" not in only_pos


def test_the_negative_jigsaw_term_is_bounded():
    torch.manual_seed(0)
    head = JigsawHead(8, 5)
    terms = conditional_jigsaw(head, torch.randn(3, 8), torch.randn(3, 8), 100 * torch.randn(3, 8),
                               torch.tensor([0, 2, 4]), negative_weight=1.0)
    assert 0.0 <= float(terms["jigsaw_neg"]) <= 1.0


@pytest.mark.parametrize("switch,removed", [("use_bt", "b_t."), ("use_bv", "b_v."), ("use_bvt", "b_vt."),
                                            ("jigsaw", "jigsaw_head.")])
def test_ablation_switches_remove_their_blocks(tiny_backbone, switch, removed):
    full, ablated = make(tiny_backbone), make(tiny_backbone, **{switch: False})
    names_full = {n for n, p in full.named_parameters() if p.requires_grad}
    names_ablated = {n for n, p in ablated.named_parameters() if p.requires_grad}
    assert any(n.startswith(removed) for n in names_full)
    assert not any(n.startswith(removed) for n in names_ablated)
    enc = ablated.encode(torch.randn(2, 3, 64, 64), SKETCH)
    width = {"use_bv": 2, "use_bvt": 4}.get(switch, 6)
    assert all(p.shape[1] == width for p in enc.visual_prompts)
    if switch == "use_bt":  # T: free learned tokens, the same for every image
        assert torch.equal(enc.text_tokens[0], enc.text_tokens[1]) and "text_tokens" in names_ablated


def test_ablation_switches_change_loss_terms(tiny_backbone):
    full = make(tiny_backbone).loss(batch())
    assert {"cls", "triplet", "jigsaw", "jigsaw_neg", "margin"} <= set(full)
    assert float(full["margin"]) != pytest.approx(0.2)  # adaptive: depends on the classes
    assert float(make(tiny_backbone, adaptive_margin=False).loss(batch())["margin"]) == pytest.approx(0.2)
    no_neg = make(tiny_backbone, jigsaw_negative=False).loss(batch())
    assert "jigsaw_pos" in no_neg and "jigsaw_neg" not in no_neg
    no_js = make(tiny_backbone, jigsaw=False).loss(batch())
    assert "jigsaw" not in no_js
    assert float(no_js["loss"].detach()) == pytest.approx(float(no_js["cls"] + no_js["triplet"]), rel=1e-5)


def test_batch_class_text_variant_conditions_on_the_batch_mean(tiny_backbone):
    m = make(tiny_backbone, class_text="batch")
    enc = m.encode(torch.randn(3, 3, 64, 64), PHOTO)
    assert m.class_embeddings(enc, NAMES).shape == (1, len(NAMES), tiny_backbone.embed_dim)
    assert torch.isfinite(m.loss(batch())["loss"])


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
