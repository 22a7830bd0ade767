"""Baseline methods: zero-shot CLIP, linear probe, CoOp, CoCoOp, MaPLe and CLIP-AT (registered on import)."""

from . import clip_at, cocoop, coop, linear_probe, maple, zeroshot_clip  # noqa: F401
