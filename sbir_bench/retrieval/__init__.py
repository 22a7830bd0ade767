"""Exact, fast retrieval metrics (mAP@all, mAP@K, P@K, Acc@K) under named, documented protocols.

The protocol definitions (light) import at once; the engine (torch) when first asked for, so that what
only names a protocol (the config, ``sbir-bench --help``) starts without torch.
"""

from typing import Any

from .protocol import PRESETS, Protocol, resolve_protocol

__all__ = ["PRESETS", "Protocol", "RetrievalResult", "evaluate", "evaluate_many", "resolve_protocol"]
ENGINE = ("RetrievalResult", "evaluate", "evaluate_many")


def __getattr__(name: str) -> Any:
    if name in ENGINE:
        from . import engine
        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
