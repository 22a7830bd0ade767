"""Baseline methods: zero-shot CLIP, linear probe, CoOp and MaPLe (registered on import)."""

from . import zeroshot_clip  # noqa: F401

for _optional in ("linear_probe", "coop", "maple"):
    try:
        __import__(f"{__name__}.{_optional}")
    except ModuleNotFoundError as _exc:  # a baseline module not written yet must not hide the others
        if _exc.name != f"{__name__}.{_optional}":
            raise
