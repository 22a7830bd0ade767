"""The prompt-injectable view of open_clip: exact without prompts, and loud if open_clip changes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from sbir_bench.models import PromptedCLIP, load_backbone
from sbir_bench.models.prompted import OpenClipInternalsChanged


@pytest.mark.parametrize("name", ["sbir-tiny", "ViT-B-32"])
def test_view_reproduces_open_clip_exactly(name):
    backbone = load_backbone(name, "random")
    view = PromptedCLIP(backbone.model)
    images = torch.randn(2, 3, backbone.image_size, backbone.image_size)
    tokens = backbone.tokenizer(["a photo of a cat.", "a sketch of a dog."])
    with torch.no_grad():
        assert torch.allclose(view.encode_image(images), F.normalize(backbone.model.encode_image(images), dim=-1), atol=1e-6)
        assert torch.allclose(view.encode_text(tokens), F.normalize(backbone.model.encode_text(tokens), dim=-1), atol=1e-6)


def test_prompts_change_outputs_and_deep_prompts_replace_slots(tiny_backbone):
    view = PromptedCLIP(tiny_backbone.model)
    images = torch.randn(2, 3, 64, 64)
    base = view.encode_image(images)
    shallow = torch.randn(2, view.vision_width)
    with_shallow = view.encode_image(images, shallow)
    deep = [None] + [torch.randn(2, view.vision_width) for _ in range(view.vision_layers - 1)]
    with_deep = view.encode_image(images, shallow, deep)
    assert not torch.allclose(base, with_shallow) and not torch.allclose(with_shallow, with_deep)
    ids = tiny_backbone.tokenizer(["X X of a star."])
    ctx = torch.randn(2, view.text_width, requires_grad=True)
    view.encode_text(ids, ctx).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    prefix = view.text_prefix(ids[:, :3], ctx.detach().unsqueeze(0))  # [SOT, X, X]: the prompt prefix
    assert len(prefix.outputs) == view.text_layers and prefix.outputs[0].shape == (1, 3, view.text_width)


@pytest.mark.parametrize("attribute", ["visual.conv1", "visual.ln_pre", "token_embedding", "ln_final", "attn_mask"])
def test_missing_internals_fail_loudly(tiny_backbone, attribute):
    model = copy.deepcopy(tiny_backbone.model)
    owner, _, name = attribute.rpartition(".")
    delattr(model.visual if owner else model, name)
    with pytest.raises(OpenClipInternalsChanged, match=name):
        PromptedCLIP(model)


def test_suffix_attention_equals_attention_over_the_concatenated_prompt():
    from sbir_bench.models.prompted import _suffix_attention
    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(64, 4, batch_first=True)
    images, classes, plen, slen = 2, 3, 5, 4
    prefix, suffix = torch.randn(images, plen, 64), torch.randn(images * classes, slen, 64)
    causal = torch.triu(torch.full((slen, slen), float("-inf")), diagonal=1)
    keys = torch.cat([prefix.repeat_interleave(classes, 0), suffix], dim=1)  # suffix i belongs to image i // classes
    mask = torch.cat([torch.zeros(slen, plen), causal], dim=1)
    expected = attn(suffix, keys, keys, need_weights=False, attn_mask=mask)[0]
    assert torch.allclose(_suffix_attention(attn, suffix, prefix, causal), expected, atol=1e-6)


@pytest.mark.parametrize("method", ["splip", "cocoop"])
def test_checkpointed_class_text_chunks_give_the_same_loss_and_gradients(method, tiny_backbone):
    """Per-image class texts in checkpointed chunks of 2 images: loss and every trainable gradient as
    all at once (to 1e-5), and the text encoder's saved activations no longer grow with the batch."""
    from sbir_bench.data.triplets import TripletBatch
    from sbir_bench.methods import get_method
    names = ["cat", "dog", "house", "tree", "car", "boat"]
    g = torch.Generator().manual_seed(0)
    images = lambda: torch.randn(6, 3, 64, 64, generator=g)  # noqa: E731
    batch = TripletBatch(images(), images(), images(), torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([1, 2, 3, 4, 5, 0]))
    torch.manual_seed(0)
    model = get_method(method)(tiny_backbone, names, list(range(6)))
    results = {}
    for chunk in (0, 2):
        model.set_text_chunk(chunk)
        model.zero_grad()
        torch.manual_seed(1)  # the same jigsaw draws
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.untyped_storage().nbytes()) or t,
                                                      lambda t: t):
            loss = model.loss(batch)["loss"]
        loss.backward()
        results[chunk] = (float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                          sum(saved))
    (loss0, grads0, saved0), (loss2, grads2, saved2) = results[0], results[2]
    assert loss2 == pytest.approx(loss0, abs=1e-5)
    assert grads0.keys() == grads2.keys() and grads0
    for name in grads0:
        torch.testing.assert_close(grads2[name], grads0[name], rtol=1e-5, atol=1e-5, msg=name)
    assert saved2 < saved0
