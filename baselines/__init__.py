"""Baseline methods: zero-shot CLIP, linear probe, CoOp, CoCoOp, MaPLe, CLIP-AT and ProS (registered on import)."""

from . import clip_at, cocoop, coop, linear_probe, maple, pros, zeroshot_clip  # noqa: F401
