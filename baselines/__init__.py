"""Baseline methods: zero-shot CLIP, linear probe, CoOp, CoCoOp, MaPLe, CLIP-AT, ProS and DePro (registered on
import)."""

from . import clip_at, cocoop, coop, depro, linear_probe, maple, pros, zeroshot_clip  # noqa: F401
