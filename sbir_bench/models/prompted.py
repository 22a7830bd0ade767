"""A prompt-injectable view of open_clip's frozen CLIP encoders.

Prompt learning (CoOp, MaPLe, SpLIP) needs to run CLIP's frozen transformers with extra learnable
tokens: appended to the visual token sequence (shallow prompts, before ``ln_pre``) and replaced
before chosen deeper blocks (deep prompts), and inserted after the start-of-text token of the text
sequence. Instead of copying open_clip's modules, :class:`PromptedCLIP` drives the *existing*
modules through their public attributes (``visual.conv1``, ``visual.transformer.resblocks``,
``token_embedding``, ``ln_final``...). :meth:`PromptedCLIP.check_internals` fails loudly, naming the
missing piece, if an open_clip release changes them.

Prompt tensors may be shaped ``(n, D)`` (shared), ``(1, n, D)`` or ``(B, n, D)`` (per sample).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

VISION_ATTRS = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj")
TEXT_ATTRS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "attn_mask")
BLOCK_ATTRS = ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2")  # used by encode_text_after


class OpenClipInternalsChanged(RuntimeError):
    """open_clip's module layout is not the one this view was written against."""


def vision_prompt_support(visual: Optional[nn.Module]) -> str:
    """Why visual prompts cannot be injected into ``visual`` ("" when they can): a ViT with class-token
    pooling is needed (ResNet image towers have no token sequence to extend)."""
    if visual is None or not hasattr(visual, "transformer"):
        return f"its image tower is a {type(visual).__name__}, not a ViT: visual prompts need a token sequence"
    missing = [f"visual.{a}" for a in VISION_ATTRS if not hasattr(visual, a)]
    if missing or not hasattr(visual.transformer, "resblocks"):
        return (f"open_clip model lacks {', '.join(missing) or 'visual.transformer.resblocks'}: prompted encoders "
                f"need updating")
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        return "prompted vision encoder supports class-token pooling only"
    if getattr(visual, "final_ln_after_pool", False):
        return "prompted vision encoder expects ln_post before pooling"
    return ""


def patch_tokens(conv1: nn.Module, positional_embedding: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """A ViT's patch tokens of ``images`` with their positional embeddings (``positional_embedding[1:]``;
    row 0 is the class token's), no class token (B, P, D): CLIP's image tower, or a method's own ViT."""
    x = conv1(images.to(conv1.weight.dtype))
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    return x + positional_embedding[1:].to(x.dtype)


def _as_batch(prompt: torch.Tensor, batch: int) -> torch.Tensor:
    """Broadcast a prompt of shape (n, D) / (1, n, D) / (B, n, D) to (B, n, D)."""
    if prompt.dim() == 2:
        prompt = prompt.unsqueeze(0)
    if prompt.shape[0] == 1 and batch != 1:
        prompt = prompt.expand(batch, -1, -1)
    return prompt


class PromptedCLIP(nn.Module):
    """Runs a frozen open_clip ``CLIP`` model with learnable prompt tokens."""

    def __init__(self, clip: nn.Module, vision: bool = True) -> None:
        """``vision=False``: only the text encoder is prompted (CoOp), so any image tower will do."""
        super().__init__()
        self.check_internals(clip, vision)
        self.clip = clip
        # Images per checkpointed chunk of encode_text_after while training (0: all at once, nothing
        # recomputed): per-image class texts then hold one chunk's activations, not batch x classes'.
        self.text_chunk = 0

    # ------------------------------------------------------------------ introspection
    @staticmethod
    def check_internals(clip: nn.Module, vision: bool = True) -> None:
        """Raise :class:`OpenClipInternalsChanged` if the attributes this view uses are missing."""
        missing = [a for a in TEXT_ATTRS if not hasattr(clip, a)]
        if missing or not hasattr(clip.transformer, "resblocks"):
            raise OpenClipInternalsChanged(f"open_clip model lacks {', '.join(missing) or 'transformer.resblocks'}: "
                                           f"prompted encoders need updating")
        block = clip.transformer.resblocks[0]
        lacking = [a for a in BLOCK_ATTRS if not hasattr(block, a)]
        if lacking or not getattr(clip.transformer, "batch_first", True):
            raise OpenClipInternalsChanged(f"open_clip text blocks lack {', '.join(lacking) or 'batch_first'}")
        if not isinstance(block.attn, nn.MultiheadAttention) or block.attn.in_proj_weight is None:
            raise OpenClipInternalsChanged("open_clip text blocks' attn is not a packed nn.MultiheadAttention")
        if getattr(clip, "text_pool_type", "argmax") != "argmax":
            raise OpenClipInternalsChanged("prompted text encoder expects argmax (EOT) pooling")
        if vision:
            why = vision_prompt_support(getattr(clip, "visual", None))
            if why:
                raise OpenClipInternalsChanged(why)

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def vision_width(self) -> int:
        return int(self.visual.conv1.out_channels)

    @property
    def text_width(self) -> int:
        return int(self.clip.token_embedding.embedding_dim)

    @property
    def vision_layers(self) -> int:
        return len(self.visual.transformer.resblocks)

    @property
    def text_layers(self) -> int:
        return len(self.clip.transformer.resblocks)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    # ------------------------------------------------------------------ shared plumbing
    @staticmethod
    def _run_blocks(transformer: nn.Module, x: torch.Tensor, attn_mask: Optional[torch.Tensor],
                    deep: Optional[Sequence[Optional[torch.Tensor]]], n_prompt: int, where: str) -> torch.Tensor:
        """Run resblocks on batch-first ``x``; before block i>0 replace the prompt slots with deep[i].

        ``where`` is "tail" (visual prompts sit at the end) or "head" (text prompts sit at 1..n).
        """
        batch_first = getattr(transformer, "batch_first", True)
        sl = slice(x.shape[1] - n_prompt, x.shape[1]) if where == "tail" else slice(1, 1 + n_prompt)
        for i, block in enumerate(transformer.resblocks):
            if i > 0 and deep is not None and i < len(deep) and deep[i] is not None:
                p = _as_batch(deep[i], x.shape[0]).to(x.dtype)
                x = torch.cat([x[:, : sl.start], p, x[:, sl.stop:]], dim=1)
            if batch_first:
                x = block(x, attn_mask=attn_mask)
            else:
                x = block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
        return x

    # ------------------------------------------------------------------ vision
    def patch_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """E_0: class token + patch tokens with positional embedding, before ``ln_pre`` (B, 1+P, Dv)."""
        v = self.visual
        x = patch_tokens(v.conv1, v.positional_embedding, images)
        cls = (v.class_embedding.to(x.dtype) + v.positional_embedding[0].to(x.dtype)).reshape(1, 1, -1)
        return torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)

    def encode_image(self, images: torch.Tensor, prompts: Optional[torch.Tensor] = None,
                     deep: Optional[Sequence[Optional[torch.Tensor]]] = None,
                     embeddings: Optional[torch.Tensor] = None, normalize: bool = True,
                     position: str = "tail") -> torch.Tensor:
        """Image embedding with ``prompts`` added before ``ln_pre`` and ``deep`` replacements.

        ``position``: "tail" puts the prompts after the patch tokens (MaPLe, SpLIP, CLIP-AT), "head"
        before the class token, so that the pooled token 0 is the first prompt (CLIP-AT's code before
        2023-08-01); ``deep`` replaces tail prompts only. ``embeddings`` lets a caller that already
        computed :meth:`patch_embeddings` reuse them.
        """
        if position not in ("tail", "head") or (position == "head" and deep is not None):
            raise ValueError(f"prompt position {position!r} (deep prompts: tail only)")
        v = self.visual
        x = self.patch_embeddings(images) if embeddings is None else embeddings
        n = 0
        if prompts is not None:
            p = _as_batch(prompts, x.shape[0]).to(x.dtype)
            n = p.shape[1]
            x = torch.cat([x, p] if position == "tail" else [p, x], dim=1)
        x = v.ln_pre(x)
        x = self._run_blocks(v.transformer, x, None, deep, n, "tail")
        x = v.ln_post(x)
        pooled = x[:, 0] @ v.proj
        return nn.functional.normalize(pooled, dim=-1) if normalize else pooled

    # ------------------------------------------------------------------ text
    def token_embeddings(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Frozen token embeddings of ``token_ids`` (N, L, Dt)."""
        return self.clip.token_embedding(token_ids.to(self.clip.token_embedding.weight.device))

    def encode_text(self, token_ids: torch.Tensor, ctx: Optional[torch.Tensor] = None,
                    deep: Optional[Sequence[Optional[torch.Tensor]]] = None, normalize: bool = True) -> torch.Tensor:
        """Text embedding of ``token_ids`` (N, L) with ``ctx`` (n, D)/(N, n, D) at positions 1..n.

        The sequence is cut after the last end-of-text token: the text transformer is causal and
        pools at EOT, so later (padding) positions cannot change the result, and a 77-token context
        usually shrinks to ~10 tokens (several times faster, bit-for-bit the same output).
        """
        c = self.clip
        eot = token_ids.argmax(dim=-1)  # read where the ids are (the CPU for a meta-device estimate)
        token_ids = token_ids[:, : int(eot.max()) + 1].to(c.token_embedding.weight.device)
        eot = eot.to(token_ids.device)
        x, n, mask = self._embed_text_input(token_ids, ctx)
        x = self._run_blocks(c.transformer, x, mask, deep, n, "head")
        x = c.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]
        pooled = c.text_projection(pooled) if isinstance(c.text_projection, nn.Linear) else pooled @ c.text_projection
        return nn.functional.normalize(pooled, dim=-1) if normalize else pooled

    def encode_text_embeddings(self, x: torch.Tensor, eot: torch.Tensor, projection: Optional[torch.Tensor] = None,
                               normalize: bool = True) -> torch.Tensor:
        """Text embedding of token embeddings ``x`` (N, L, Dt) in which a method has placed its own
        vectors wherever its prompt puts them (ProS: in the middle of the sentence), pooled at the
        end-of-text positions ``eot`` (N,), through ``projection`` (default: CLIP's). Positions after
        the last end-of-text token are cut, as in :meth:`encode_text` (the same values)."""
        c = self.clip
        length = int(eot.max()) + 1 if eot.device.type != "meta" else x.shape[1]
        x = x[:, :length] + c.positional_embedding[:length].to(x.dtype)
        mask = c.attn_mask[:length, :length] if c.attn_mask is not None else None
        x = c.ln_final(self._run_blocks(c.transformer, x, mask, None, 0, "head"))
        pooled = x[torch.arange(x.shape[0], device=x.device), eot.to(x.device)]
        proj = c.text_projection if projection is None else projection
        pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        return nn.functional.normalize(pooled, dim=-1) if normalize else pooled

    @classmethod
    def run_transformer(cls, transformer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``transformer``'s blocks on batch-first ``x`` without a mask (an image tower, or a method's own
        ViT built like one), whatever the open_clip release's batch layout."""
        return cls._run_blocks(transformer, x, None, None, 0, "tail")

    def _embed_text_input(self, token_ids: torch.Tensor, ctx: Optional[torch.Tensor]
                          ) -> Tuple[torch.Tensor, int, Optional[torch.Tensor]]:
        """Token embeddings with ``ctx`` at positions 1..n, plus positions; returns (x, n, causal mask)."""
        c = self.clip
        x = self.token_embeddings(token_ids).to(self.dtype)
        n = 0
        if ctx is not None:
            p = _as_batch(ctx, x.shape[0]).to(x.dtype)
            n = p.shape[1]
            x = torch.cat([x[:, :1], p, x[:, 1 + n:]], dim=1)
        length = x.shape[1]
        x = x + c.positional_embedding[:length].to(x.dtype)
        return x, n, (c.attn_mask[:length, :length] if c.attn_mask is not None else None)

    def text_prefix(self, token_ids: torch.Tensor, ctx: Optional[torch.Tensor] = None,
                    deep: Optional[Sequence[Optional[torch.Tensor]]] = None) -> "TextPrefix":
        """Run a class-independent prompt prefix (``[SOT, ctx, fixed words]``, no end token) through the
        text transformer, keeping every block's input and output (B, P, D).

        CLIP's text transformer is causal: positions of the prefix never attend to what follows, so
        these states are exactly those of any full prompt that starts with this prefix. They serve
        as per-layer summaries (SpLIP's B_vt) and as the cached keys/values of
        :meth:`encode_text_after` (one prefix pass per image instead of one per image and class).
        """
        c = self.clip
        x, n, mask = self._embed_text_input(token_ids, ctx)
        inputs, outputs = [], []
        for i, block in enumerate(c.transformer.resblocks):
            if i > 0 and deep is not None and i < len(deep) and deep[i] is not None:
                x = torch.cat([x[:, :1], _as_batch(deep[i], x.shape[0]).to(x.dtype), x[:, 1 + n:]], dim=1)
            inputs.append(x)
            x = block(x, attn_mask=mask)
            outputs.append(x)
        return TextPrefix(inputs, outputs, n)

    def encode_text_after(self, prefix: "TextPrefix", suffix_ids: torch.Tensor, eot: torch.Tensor,
                          normalize: bool = True) -> torch.Tensor:
        """Text embeddings (B, C, E) of every prefix b followed by every suffix c (``[class words, ., EOT]``).

        The suffix tokens attend to the cached prefix keys/values (:meth:`text_prefix`) and causally
        to each other, using each block's own ``ln_1``, ``attention``, ``mlp`` and layer scales, so
        the result equals :meth:`encode_text` of the full prompts (tested) at a fraction of the
        cost: each prefix is run once, not once per class. ``eot`` is each suffix's end-token index.
        """
        b = prefix.inputs[0].shape[0]
        chunk = self.text_chunk
        if chunk and torch.is_grad_enabled():  # checkpointed even as one chunk: what is held never depends on b
            # Same arithmetic per image, recomputed in backward: activations bounded by one chunk.
            parts = [checkpoint(self._texts_after, [x[i: i + chunk] for x in prefix.inputs], suffix_ids, eot, normalize,
                                use_reentrant=False) for i in range(0, b, chunk)]
            return torch.cat(parts)
        return self._texts_after(prefix.inputs, suffix_ids, eot, normalize)

    def _texts_after(self, prefix_inputs: List[torch.Tensor], suffix_ids: torch.Tensor, eot: torch.Tensor,
                     normalize: bool) -> torch.Tensor:
        """:meth:`encode_text_after` of the prefixes whose per-block inputs are ``prefix_inputs``."""
        c = self.clip
        b, plen = prefix_inputs[0].shape[:2]
        n_cls, slen = suffix_ids.shape
        pos = c.positional_embedding[plen: plen + slen].to(self.dtype)
        x = (self.token_embeddings(suffix_ids).to(self.dtype) + pos).unsqueeze(0).expand(b, -1, -1, -1)
        x = x.reshape(b * n_cls, slen, -1)
        causal = torch.triu(torch.full((slen, slen), float("-inf"), dtype=x.dtype, device=x.device), diagonal=1)
        for block, kv_in in zip(c.transformer.resblocks, prefix_inputs):
            x = x + block.ls_1(_suffix_attention(block.attn, block.ln_1(x), block.ln_1(kv_in), causal))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        x = c.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot.to(x.device).repeat(b)]
        pooled = c.text_projection(pooled) if isinstance(c.text_projection, nn.Linear) else pooled @ c.text_projection
        pooled = pooled.reshape(b, n_cls, -1)
        return nn.functional.normalize(pooled, dim=-1) if normalize else pooled


@dataclass
class TextPrefix:
    """Per-block inputs and outputs (B, P, D) of a text prefix, and its number of prompt slots."""

    inputs: List[torch.Tensor]
    outputs: List[torch.Tensor]
    n_prompt: int


def _suffix_attention(attn: nn.MultiheadAttention, suffix: torch.Tensor, prefix: torch.Tensor,
                      causal: torch.Tensor) -> torch.Tensor:
    """``attn`` of every suffix (B*C, S, D) over its image's prefix (B, P, D) and, causally, itself.

    What :class:`nn.MultiheadAttention` computes on the concatenated ``[prefix, suffix]`` keys, without
    building them: the prefix keys and values are projected once per image (not once per image and
    class), and the scores against them come from one batched product per image.
    """
    b, plen, dim = prefix.shape
    n, slen, _ = suffix.shape
    heads = attn.num_heads
    hd = dim // heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)

    def split(t: torch.Tensor, batch: int) -> torch.Tensor:  # (batch, L, D) -> (batch, heads, L, hd)
        return t.reshape(batch, -1, heads, hd).transpose(1, 2)

    q = nn.functional.linear(suffix, w_q, b_q) * hd ** -0.5
    k_pre, v_pre = (split(nn.functional.linear(prefix, w, bias), b) for w, bias in ((w_k, b_k), (w_v, b_v)))
    k_suf, v_suf = (split(nn.functional.linear(suffix, w, bias), n) for w, bias in ((w_k, b_k), (w_v, b_v)))
    per_image = n // b  # suffixes (classes) per prefix (image)
    s_pre = split(q, b) @ k_pre.transpose(-1, -2)                      # (B, h, C*S, P)
    s_pre = s_pre.reshape(b, heads, per_image, slen, plen).transpose(1, 2).reshape(n, heads, slen, plen)
    s_suf = split(q, n) @ k_suf.transpose(-1, -2) + causal             # (B*C, h, S, S)
    weights = torch.softmax(torch.cat([s_pre, s_suf], dim=-1), dim=-1)
    w_pre = weights[..., :plen].reshape(b, per_image, heads, slen, plen).transpose(1, 2)
    out_pre = (w_pre.reshape(b, heads, per_image * slen, plen) @ v_pre)  # (B, h, C*S, hd)
    out_pre = out_pre.reshape(b, heads, per_image, slen, hd).transpose(1, 2).reshape(n, heads, slen, hd)
    out = (out_pre + weights[..., plen:] @ v_suf).transpose(1, 2).reshape(n, slen, dim)
    return nn.functional.linear(out, attn.out_proj.weight, attn.out_proj.bias)
