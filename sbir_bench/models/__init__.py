"""Backbones: open_clip models built in one place, their preprocessing, and a prompt-injectable view
of their encoders."""

from .backbone_configs import list_backbones
from .factory import Backbone, load_backbone
from .prompted import PromptedCLIP

__all__ = ["Backbone", "load_backbone", "list_backbones", "PromptedCLIP"]
