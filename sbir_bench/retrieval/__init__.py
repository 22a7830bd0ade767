"""Exact, fast retrieval metrics (mAP@all, mAP@K, P@K, Acc@K) with documented conventions."""

from .metrics import RetrievalResult, evaluate
from .protocol import Protocol

__all__ = ["Protocol", "RetrievalResult", "evaluate"]
