"""Writing files safely: atomic replacement, strict JSON, and output checks made before any work.

Every file sbir-bench writes (records, embeddings, per-query values, checkpoints, tables, the tiny
backbone's weights) goes through :func:`atomic_write_bytes`: a crash mid-write leaves the old file or
none, never half a file. JSON is always strict (no ``NaN``/``Infinity``, which other JSON readers
reject): a non-finite number is a bug upstream, reported as an error instead of written.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict

import numpy as np

from .errors import OutputError


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes (weight files and shipped data are identified by content, not by name)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux says it (``/proc/self/status``), else by
    setting and restoring it. Files sbir-bench writes get the mode any other program's would."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``.

    A crash mid-write leaves either the old file or none, never half a file.
    """
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would hide a shared results folder from the group
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # the folder became unwritable, or the disk is full: one line, no traceback
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _first_non_finite(obj: Any, where: str = "") -> str | None:
    """Dotted path of the first NaN/Inf inside ``obj``, or None."""
    if isinstance(obj, (float, np.floating)) and not math.isfinite(float(obj)):
        return where or "<value>"
    if isinstance(obj, dict):
        for key, value in obj.items():
            hit = _first_non_finite(value, f"{where}.{key}" if where else str(key))
            if hit:
                return hit
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            hit = _first_non_finite(value, f"{where}[{i}]")
            if hit:
                return hit
    return None


def json_text(data: Dict[str, Any]) -> str:
    """Pretty, key-sorted, strict JSON; a NaN or infinity anywhere is an error naming where."""
    bad = _first_non_finite(data)
    if bad:
        raise OutputError(f"refusing to write a non-finite number into JSON (at {bad})")
    return json.dumps(data, indent=2, sort_keys=True, default=_json_default, allow_nan=False) + "\n"


def atomic_write_json(path: str | Path, data: Dict[str, Any]) -> Path:
    """Atomically write ``data`` as strict JSON (see :func:`json_text`)."""
    return atomic_write_bytes(path, json_text(data).encode())


def atomic_write_npz(path: str | Path, compressed: bool = False, **arrays: np.ndarray) -> Path:
    """Atomically write a ``.npz`` of ``arrays`` (optionally zip-compressed)."""
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """Fail now, in one line, if ``path`` cannot be written as a file (it is a folder, or its
    folder cannot be created or written)."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{what} {p} is a folder; give a file name")
    _check_writable_dir(p.parent if str(p.parent) else Path("."), f"the folder of {what} {p}")
    return p


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Fail now, in one line, if ``path`` cannot be used as a folder to write into."""
    return _check_writable_dir(Path(path), f"{what} {path}")


def _check_writable_dir(folder: Path, what: str) -> Path:
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise OutputError(f"{what}: {existing} is a file, not a folder")
    if not _can_create_in(existing):
        raise OutputError(f"{what}: {existing} is not writable")
    return folder


def _can_create_in(folder: Path) -> bool:
    """Whether a file can really be created in ``folder`` (``os.access`` is not enough: mode bits do not
    bind root, it checks the real user, not the effective one, and an ACL can refuse what it allows).
    The probe is an unnamed temporary file where the system supports one, removed at once."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False
