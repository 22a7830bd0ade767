"""open_clip model configs bundled with sbir-bench (``sbir-tiny``) and quiet model construction.

Both the backbone factory and the tiny backbone's pretraining build models through
:func:`create_model`, so the bundled configs are registered before any lookup and open_clip's
"initialized randomly" warning (sbir-bench loads weights itself) never reaches the user.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

import open_clip

from ..log import quiet_library

CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY = "sbir-tiny"
_registered = False


def register_configs() -> None:
    """Make the bundled JSON configs known to open_clip, once."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def list_backbones() -> List[str]:
    """Every model name open_clip can build, bundled configs included."""
    register_configs()
    return open_clip.list_models()


def vit_image_tower(name: str) -> bool:
    """True when ``name``'s image tower is a ViT built by open_clip (a token sequence prompts can join);
    False for ResNet (``layers`` is a list) and timm towers. Read from the JSON config: nothing is built."""
    register_configs()
    cfg = open_clip.get_model_config(name) or {}
    vision = cfg.get("vision_cfg", {})
    return isinstance(vision.get("layers", 12), int) and not vision.get("timm_model_name")


def create_model(name: str, **kwargs: Any):
    """``open_clip.create_model_and_transforms(name, **kwargs)`` with bundled configs and quiet logs."""
    register_configs()
    with quiet_library(open_clip):
        return open_clip.create_model_and_transforms(name, **kwargs)
