"""The one trainer every method uses (frozen backbone, AMP, accumulation, checkpoints, DDP)."""

from .trainer import Trainer, TrainResult

__all__ = ["Trainer", "TrainResult"]
