"""Atomic, resumable training checkpoints holding only trainable state, loaded safely.

Checkpoints are read with ``torch.load(weights_only=True)``: they hold only tensors and plain
Python values (the NumPy RNG state is stored as a tensor), so loading one never runs pickled code.
Each checkpoint carries what it was trained on (:func:`~sbir_bench.runner.training_fingerprint`);
resuming with different settings is refused with one line naming the keys that differ, so a record
never claims a config its model was not trained with.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from ..errors import OutputError, WeightsError
from ..fileio import atomic_write_bytes
from ..log import get_logger

log = get_logger(__name__)

LAST = "last.pt"


def rng_state() -> Dict[str, Any]:
    """Every RNG's state as tensors and plain values (safe for ``weights_only`` loading)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.random.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.random.set_rng_state(state["torch"])
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
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
    """The last checkpoint in ``directory`` or None; a corrupt or unsafe file is a one-line error."""
    path = directory / LAST
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"checkpoint {path} is unreadable ({type(exc).__name__}); delete it to start over") from None


def _flat(tree: Any, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flat(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], tree


def fingerprint_differences(saved: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """``key: saved -> current`` for every setting that differs between two fingerprints."""
    a, b = dict(_flat(saved)), dict(_flat(current))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "<absent>") != b.get(k, "<absent>")]


# `run` resumes only with --resume, `reproduce` always: the way out must fit both commands
_FRESH_START = ("train from scratch in another --output-dir, or delete {where} (with `run`, dropping --resume "
                "also starts afresh)")


def check_resumable(ckpt: Dict[str, Any], method: str, fingerprint: Optional[Dict[str, Any]], where: Path) -> None:
    """Refuse a checkpoint of another method or trained with other settings (one line, keys named)."""
    if ckpt.get("method") != method:
        raise WeightsError(f"checkpoint in {where} is for method {ckpt.get('method')!r}, not {method!r}; "
                           f"{_FRESH_START.format(where=where)}")
    if fingerprint is None:
        return
    diffs = fingerprint_differences(ckpt.get("trained_on") or {}, fingerprint)
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise WeightsError(f"checkpoint in {where} was trained with other settings ({shown}); resume with the "
                           f"original settings, or {_FRESH_START.format(where=where)}")


@contextlib.contextmanager
def claim_folder(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on a checkpoint folder while a run trains into it.

    Two runs writing one folder would interleave their epochs' checkpoints and either could then
    resume the other's model; the second run stops at once with one line instead. The lock is an
    ``flock`` on ``<folder>/.lock``, released by the kernel when the process ends, however it ends.
    """
    try:
        # POSIX only: imported where a lock is taken
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    fh = open(directory / ".lock", "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OutputError(f"checkpoint folder {directory} is in use by another run (same run name); wait for "
                              f"it to finish, or give this run another --output-dir or --checkpoint-dir") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        fh.close()


def warn_if_foreign(directory: Path, method: str, fingerprint: Optional[Dict[str, Any]]) -> None:
    """Warn when a run that does not resume is about to overwrite the checkpoints of another config."""
    path = directory / LAST
    if not path.is_file():
        return
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an unreadable old checkpoint is overwritten like any other
        return
    diffs = fingerprint_differences(ckpt.get("trained_on") or {}, fingerprint or {}) if fingerprint is not None else []
    if ckpt.get("method") != method or diffs:
        what = f"method {ckpt.get('method')!r}" if ckpt.get("method") != method else "; ".join(diffs[:3])
        log.warning(f"overwriting the checkpoints in {directory} of a run with other settings ({what})")
