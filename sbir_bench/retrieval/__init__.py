"""Exact, fast retrieval metrics (mAP@all, mAP@K, P@K, Acc@K) under named, documented protocols."""

from .engine import RetrievalResult, evaluate, evaluate_many
from .protocol import PRESETS, Protocol, resolve_protocol

__all__ = ["PRESETS", "Protocol", "RetrievalResult", "evaluate", "evaluate_many", "resolve_protocol"]
