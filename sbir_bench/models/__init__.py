"""Backbones: open_clip models built in one place, and a prompt-injectable view of their encoders."""

from .factory import Backbone, load_backbone, list_backbones
from .prompted import PromptedCLIP

__all__ = ["Backbone", "load_backbone", "list_backbones", "PromptedCLIP"]
