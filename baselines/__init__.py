"""Baseline methods: zero-shot CLIP, linear probe, CoOp and MaPLe (registered on import)."""

from . import coop, linear_probe, maple, zeroshot_clip  # noqa: F401
