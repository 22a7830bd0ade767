"""Baseline methods: zero-shot CLIP, linear probe, CoOp, CoCoOp, MaPLe, CLIP-AT, ProS, DePro and UCDR-Adapter
(registered on import)."""

from . import clip_at, cocoop, coop, depro, linear_probe, maple, pros, ucdr_adapter, zeroshot_clip  # noqa: F401
