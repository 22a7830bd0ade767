"""The baselines' own rules: CoOp's and MaPLe's context set-up at the edges of their reference code,
and CLIP-AT's private image tower (the backbone it is handed is never changed)."""

from __future__ import annotations

import pytest
import torch

from sbir_bench.errors import ConfigError


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


def test_clip_at_trains_its_own_image_tower_never_the_backbone_it_is_handed(tiny_backbone):
    from sbir_bench.baselines.clip_at import CLIPAT

    from sbir_bench.data.triplets import TripletBatch
    before = {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}
    method = CLIPAT(tiny_backbone, ["cat", "dog", "cow"], [0, 1])
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())
    assert any(p.requires_grad for p in method.clip.visual.parameters())
    size = tiny_backbone.image_size
    batch = TripletBatch(torch.rand(2, 3, size, size), torch.rand(2, 3, size, size), torch.rand(2, 3, size, size),
                         torch.tensor([0, 1]), torch.tensor([1, 0]))
    optimiser = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=1.0)
    method.loss(batch)["loss"].backward()
    optimiser.step()
    after = tiny_backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert method.clip.transformer is tiny_backbone.model.transformer  # the text tower is shared, not copied
