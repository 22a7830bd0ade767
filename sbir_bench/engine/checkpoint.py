"""Atomic, resumable training checkpoints holding only trainable state."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from ..errors import SbirError
from ..records import atomic_write_bytes

LAST = "last.pt"


def rng_state() -> Dict[str, Any]:
    return {"torch": torch.random.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.random.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, payload: Dict[str, Any]) -> Path:
    """Write ``epoch_<n>.pt`` and ``last.pt`` atomically (a kill mid-write leaves the old one)."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    atomic_write_bytes(directory / f"epoch_{payload['epoch']}.pt", data)
    return atomic_write_bytes(directory / LAST, data)


def load_checkpoint(directory: Path) -> Optional[Dict[str, Any]]:
    """The last checkpoint in ``directory`` or None; a corrupt file is a one-line error."""
    path = directory / LAST
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise SbirError(f"checkpoint {path} is unreadable ({type(exc).__name__}); delete it to start over") from None
