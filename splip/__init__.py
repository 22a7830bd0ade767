"""SpLIP (Singha et al., ECCV 2024): registered as the method ``splip`` on import."""

from .method import SpLIP, SpLIPConfig  # noqa: F401
